//! Authorization with Kafka's StandardAuthorizer semantics, decided on an image: who may do
//! what to which topic, group or the cluster, from the access control entries in the log.
//!
//! The rules (as `org.apache.kafka.metadata.authorizer.StandardAuthorizer`):
//! - a super user may do everything;
//! - the entries that apply to a resource are the LITERAL ones naming it or `*` and the
//!   PREFIXED ones naming a prefix of it; of those, the ones for the principal (or `User:*`)
//!   and the client's host (or `*`) decide;
//! - a DENY of the operation (or of ALL) wins over every ALLOW;
//! - an ALLOW of the operation or of ALL allows it; an ALLOW of READ, WRITE, DELETE or ALTER
//!   also allows DESCRIBE, and one of ALTER_CONFIGS allows DESCRIBE_CONFIGS;
//! - when no entry at all applies to the resource, `allow.everyone.if.no.acl.found` decides
//!   (false by default); otherwise what is not allowed is denied.

use crate::error::{ApiError, ErrorCode};
use crate::image::MetadataImage;
use crate::record::{
    AccessControlEntryRecord, AclOperation, AclPatternType, AclPermission, AclResourceType,
};
use std::collections::BTreeSet;

/// The one name of the cluster resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The principal that stands for every principal in an entry.
pub const WILDCARD_PRINCIPAL: &str = "User:*";
/// The host that stands for every host in an entry.
pub const WILDCARD_HOST: &str = "*";

/// A node's authorizer settings (`authorizer.class.name` set to the StandardAuthorizer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Authorizer {
    /// `super.users`: principals allowed everything.
    pub super_users: BTreeSet<String>,
    /// `allow.everyone.if.no.acl.found`.
    pub allow_everyone_if_no_acl_found: bool,
}

/// Whether an entry's operation covers `op` for an ALLOW.
fn allow_covers(granted: AclOperation, op: AclOperation) -> bool {
    use AclOperation::*;
    granted == All
        || granted == op
        || (op == Describe && matches!(granted, Read | Write | Delete | Alter))
        || (op == DescribeConfigs && granted == AlterConfigs)
}

/// Whether `acl` is for `principal` from `host`.
fn applies_to(acl: &AccessControlEntryRecord, principal: &str, host: &str) -> bool {
    (acl.principal == principal || acl.principal == WILDCARD_PRINCIPAL)
        && (acl.host == WILDCARD_HOST || acl.host == host)
}

impl Authorizer {
    /// Whether `principal`, connected from `host` (an address, without Kafka's leading '/'),
    /// may do `op` on the resource `name` of `resource_type`.
    pub fn authorize(
        &self,
        image: &MetadataImage,
        principal: &str,
        host: &str,
        op: AclOperation,
        resource_type: AclResourceType,
        name: &str,
    ) -> bool {
        self.decide(
            image.acls_matching(resource_type, name),
            principal,
            host,
            op,
            |_| true,
        )
    }

    /// Whether `principal` may do `op` on some resource of `resource_type` (Kafka's
    /// `authorizeByResourceType`, used for an idempotent producer's InitProducerId: WRITE
    /// on any topic). Allowed when an ALLOW for it applies to the principal and host and no
    /// DENY of it for them names every resource of the type (LITERAL `*`); with no entry on
    /// the type at all, `allow.everyone.if.no.acl.found` decides.
    pub fn authorize_any(
        &self,
        image: &MetadataImage,
        principal: &str,
        host: &str,
        op: AclOperation,
        resource_type: AclResourceType,
    ) -> bool {
        self.decide(
            image.acls_of_type(resource_type),
            principal,
            host,
            op,
            |deny| deny.pattern_type == AclPatternType::Literal && deny.resource_name == "*",
        )
    }

    /// The decision over the entries that apply to what is asked: a super user passes; a
    /// DENY of `op` (or of ALL) for the principal and host that `deny_counts` accepts refuses;
    /// else an ALLOW covering `op` allows; with no entry at all, the default decides.
    fn decide<'a>(
        &self,
        entries: impl Iterator<Item = &'a AccessControlEntryRecord>,
        principal: &str,
        host: &str,
        op: AclOperation,
        deny_counts: impl Fn(&AccessControlEntryRecord) -> bool,
    ) -> bool {
        if self.super_users.contains(principal) {
            return true;
        }
        let mut any = false;
        let mut allowed = false;
        for acl in entries {
            any = true;
            if !applies_to(acl, principal, host) {
                continue;
            }
            match acl.permission {
                AclPermission::Deny => {
                    let of_op = acl.operation == AclOperation::All || acl.operation == op;
                    if of_op && deny_counts(acl) {
                        return false;
                    }
                }
                AclPermission::Allow => allowed |= allow_covers(acl.operation, op),
            }
        }
        allowed || (!any && self.allow_everyone_if_no_acl_found)
    }
}

/// How a filter matches resource patterns (Kafka's `PatternType` in a filter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternFilter {
    /// Any pattern type (the name, if given, exactly).
    Any,
    /// The entries that would apply to the named resource: LITERAL of the name or `*`,
    /// PREFIXED of a prefix of it.
    Match,
    /// This pattern type only.
    Is(AclPatternType),
}

/// A filter over access control entries (DescribeAcls, DeleteAcls); `None` matches anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclFilter {
    /// The resource type.
    pub resource_type: Option<AclResourceType>,
    /// The resource name.
    pub resource_name: Option<String>,
    /// How names match.
    pub pattern: PatternFilter,
    /// The principal.
    pub principal: Option<String>,
    /// The host.
    pub host: Option<String>,
    /// The operation.
    pub operation: Option<AclOperation>,
    /// The permission.
    pub permission: Option<AclPermission>,
}

impl AclFilter {
    /// A filter from Kafka's wire ids (1 is ANY for the resource type, the pattern type,
    /// the operation and the permission; 2 is MATCH for the pattern type).
    pub fn from_wire(
        resource_type: i8,
        resource_name: Option<&str>,
        pattern_type: i8,
        principal: Option<&str>,
        host: Option<&str>,
        operation: i8,
        permission: i8,
    ) -> Result<AclFilter, ApiError> {
        let invalid = |what: &str, id: i8| {
            Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("invalid {what} {id} in an ACL filter"),
            ))
        };
        let resource_type = match (resource_type, AclResourceType::from_id(resource_type)) {
            (1, _) => None,
            (_, Some(t)) => Some(t),
            (id, None) => return invalid("resource type", id),
        };
        let pattern = match (pattern_type, AclPatternType::from_id(pattern_type)) {
            (1, _) => PatternFilter::Any,
            (2, _) => PatternFilter::Match,
            (_, Some(p)) => PatternFilter::Is(p),
            (id, None) => return invalid("pattern type", id),
        };
        let operation = match (operation, AclOperation::from_id(operation)) {
            (1, _) => None,
            (_, Some(o)) => Some(o),
            (id, None) => return invalid("operation", id),
        };
        let permission = match (permission, AclPermission::from_id(permission)) {
            (1, _) => None,
            (_, Some(p)) => Some(p),
            (id, None) => return invalid("permission type", id),
        };
        Ok(AclFilter {
            resource_type,
            resource_name: resource_name.map(str::to_string),
            pattern,
            principal: principal.map(str::to_string),
            host: host.map(str::to_string),
            operation,
            permission,
        })
    }

    /// Whether `acl` passes the filter.
    pub fn matches(&self, acl: &AccessControlEntryRecord) -> bool {
        let name_matches = match (&self.pattern, &self.resource_name) {
            (PatternFilter::Is(p), _) if *p != acl.pattern_type => false,
            (_, None) => true,
            (PatternFilter::Any | PatternFilter::Is(_), Some(name)) => acl.resource_name == *name,
            (PatternFilter::Match, Some(name)) => match acl.pattern_type {
                AclPatternType::Literal => acl.resource_name == *name || acl.resource_name == "*",
                AclPatternType::Prefixed => name.starts_with(acl.resource_name.as_str()),
            },
        };
        name_matches
            && self.resource_type.is_none_or(|t| t == acl.resource_type)
            && self.principal.as_ref().is_none_or(|p| *p == acl.principal)
            && self.host.as_ref().is_none_or(|h| *h == acl.host)
            && self.operation.is_none_or(|o| o == acl.operation)
            && self.permission.is_none_or(|p| p == acl.permission)
    }
}

/// The operations an entry on `resource_type` may name (as Kafka's `AclEntry`), besides ALL.
pub fn supported_operations(resource_type: AclResourceType) -> &'static [AclOperation] {
    use AclOperation::*;
    match resource_type {
        AclResourceType::Topic => &[
            Read,
            Write,
            Create,
            Describe,
            Delete,
            Alter,
            DescribeConfigs,
            AlterConfigs,
        ],
        AclResourceType::Group => &[Read, Describe, Delete],
        AclResourceType::Cluster => &[
            Create,
            ClusterAction,
            DescribeConfigs,
            AlterConfigs,
            IdempotentWrite,
            Alter,
            Describe,
        ],
        AclResourceType::TransactionalId => &[Describe, Write],
        AclResourceType::DelegationToken => &[Describe],
        AclResourceType::User => &[CreateTokens, DescribeTokens],
    }
}

/// Checks a new entry as Kafka's controller does: a resource name (and for the cluster,
/// `kafka-cluster`), a principal of the form `Type:name`, a host, an operation the resource
/// type has.
pub fn validate_new_acl(acl: &AccessControlEntryRecord) -> Result<(), ApiError> {
    let invalid = |m: String| Err(ApiError::new(ErrorCode::InvalidRequest, m));
    if acl.resource_name.is_empty() {
        return invalid("Resource name should not be empty".into());
    }
    if acl.resource_type == AclResourceType::Cluster && acl.resource_name != CLUSTER_NAME {
        return invalid(format!(
            "The only valid name for the CLUSTER resource is {CLUSTER_NAME}"
        ));
    }
    if acl.pattern_type == AclPatternType::Prefixed && acl.resource_name == "*" {
        return invalid("A PREFIXED pattern of '*' is not allowed; use LITERAL '*'".into());
    }
    match acl.principal.split_once(':') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
        _ => {
            return invalid(format!(
                "Could not parse principal from `{}` (no colon is present separating the principal type from the principal name)",
                acl.principal
            ))
        }
    }
    if acl.host.is_empty() {
        return invalid("Host should not be empty".into());
    }
    if acl.operation != AclOperation::All
        && !supported_operations(acl.resource_type).contains(&acl.operation)
    {
        return invalid(format!(
            "{} is not a valid operation for resource type {}",
            acl.operation.name(),
            acl.resource_type.name()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::MetadataRecord;
    use crate::types::LogOffset;
    use AclOperation::*;
    use AclPatternType::*;
    use AclPermission::*;
    use AclResourceType::*;

    fn acl(
        n: u128,
        resource_type: AclResourceType,
        name: &str,
        pattern_type: AclPatternType,
        principal: &str,
        operation: AclOperation,
        permission: AclPermission,
    ) -> AccessControlEntryRecord {
        AccessControlEntryRecord {
            id: uuid::Uuid::from_u128(n),
            resource_type,
            resource_name: name.into(),
            pattern_type,
            principal: principal.into(),
            host: "*".into(),
            operation,
            permission,
        }
    }

    fn image_of(acls: Vec<AccessControlEntryRecord>) -> MetadataImage {
        let mut image = MetadataImage::new();
        for (i, a) in acls.into_iter().enumerate() {
            image
                .replay(LogOffset(i as i64), &MetadataRecord::AccessControlEntry(a))
                .unwrap();
        }
        image
    }

    const ALICE: &str = "User:alice";

    #[test]
    fn a_prefixed_allow_covers_exactly_the_names_it_prefixes() {
        let image = image_of(vec![acl(1, Topic, "orders-", Prefixed, ALICE, Read, Allow)]);
        let auth = Authorizer::default();
        let can = |op, name| auth.authorize(&image, ALICE, "10.0.0.1", op, Topic, name);
        assert!(can(Read, "orders-eu"));
        assert!(can(Read, "orders-"));
        assert!(can(Describe, "orders-eu"), "READ implies DESCRIBE");
        assert!(!can(Read, "orders"), "shorter than the prefix");
        assert!(!can(Read, "payments"));
        assert!(!can(Write, "orders-eu"));
        assert!(!auth.authorize(&image, "User:bob", "h", Read, Topic, "orders-eu"));
        assert!(!auth.authorize(&image, ALICE, "h", Read, Group, "orders-eu"));
    }

    #[test]
    fn a_deny_wins_over_every_allow_and_only_for_its_operation() {
        let image = image_of(vec![
            acl(1, Topic, "*", Literal, WILDCARD_PRINCIPAL, All, Allow),
            acl(2, Topic, "secret", Prefixed, ALICE, Read, Deny),
        ]);
        let auth = Authorizer::default();
        let can = |op, name| auth.authorize(&image, ALICE, "h", op, Topic, name);
        assert!(can(Read, "public"));
        assert!(!can(Read, "secret-plans"));
        assert!(
            can(Describe, "secret-plans"),
            "a DENY of READ does not deny DESCRIBE"
        );
        let all_denied = image_of(vec![
            acl(1, Topic, "t", Literal, ALICE, Write, Allow),
            acl(2, Topic, "t", Literal, WILDCARD_PRINCIPAL, All, Deny),
        ]);
        assert!(!auth.authorize(&all_denied, ALICE, "h", Write, Topic, "t"));
    }

    #[test]
    fn with_no_entry_on_a_resource_the_default_decides_and_super_users_pass() {
        let image = image_of(vec![acl(
            1, Topic, "other", Literal, "User:bob", Read, Allow,
        )]);
        let strict = Authorizer::default();
        assert!(!strict.authorize(&image, ALICE, "h", Read, Topic, "free"));
        let open = Authorizer {
            allow_everyone_if_no_acl_found: true,
            ..Authorizer::default()
        };
        assert!(open.authorize(&image, ALICE, "h", Read, Topic, "free"));
        assert!(
            !open.authorize(&image, ALICE, "h", Read, Topic, "other"),
            "an entry for someone else is still an entry on the resource"
        );
        let supers = Authorizer {
            super_users: [ALICE.to_string()].into(),
            ..Authorizer::default()
        };
        assert!(supers.authorize(&image, ALICE, "h", Alter, Cluster, CLUSTER_NAME));
    }

    #[test]
    fn hosts_and_implied_operations_follow_kafka() {
        let mut only_there = acl(1, Topic, "t", Literal, ALICE, AlterConfigs, Allow);
        only_there.host = "10.0.0.7".into();
        let image = image_of(vec![only_there]);
        let auth = Authorizer::default();
        assert!(auth.authorize(&image, ALICE, "10.0.0.7", DescribeConfigs, Topic, "t"));
        assert!(!auth.authorize(&image, ALICE, "10.0.0.8", DescribeConfigs, Topic, "t"));
        assert!(!auth.authorize(&image, ALICE, "10.0.0.7", Describe, Topic, "t"));
    }

    #[test]
    fn write_on_any_topic_is_decided_by_resource_type() {
        let auth = Authorizer::default();
        let image = image_of(vec![acl(1, Topic, "logs-", Prefixed, ALICE, Write, Allow)]);
        assert!(auth.authorize_any(&image, ALICE, "h", Write, Topic));
        assert!(!auth.authorize_any(&image, "User:bob", "h", Write, Topic));
        let denied = image_of(vec![
            acl(1, Topic, "logs-", Prefixed, ALICE, Write, Allow),
            acl(2, Topic, "*", Literal, ALICE, Write, Deny),
        ]);
        assert!(!auth.authorize_any(&denied, ALICE, "h", Write, Topic));
    }

    #[test]
    fn filters_match_as_kafkas_do() {
        let literal = acl(1, Topic, "orders", Literal, ALICE, Read, Allow);
        let prefixed = acl(2, Topic, "ord", Prefixed, ALICE, Read, Allow);
        let wildcard = acl(3, Topic, "*", Literal, ALICE, Read, Allow);
        let filter = |pattern, name: Option<&str>| AclFilter {
            resource_type: Some(Topic),
            resource_name: name.map(str::to_string),
            pattern,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        };
        let matching = |f: &AclFilter| {
            [&literal, &prefixed, &wildcard]
                .into_iter()
                .filter(|a| f.matches(a))
                .map(|a| a.id.as_u128())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            matching(&filter(PatternFilter::Match, Some("orders"))),
            [1, 2, 3]
        );
        assert_eq!(matching(&filter(PatternFilter::Any, Some("orders"))), [1]);
        assert_eq!(matching(&filter(PatternFilter::Is(Prefixed), None)), [2]);
        assert_eq!(matching(&filter(PatternFilter::Any, None)), [1, 2, 3]);
        let parsed = AclFilter::from_wire(1, None, 1, Some(ALICE), None, 1, 1).unwrap();
        assert!(parsed.matches(&literal));
        assert!(AclFilter::from_wire(0, None, 1, None, None, 1, 1).is_err());
    }

    #[test]
    fn new_entries_are_checked_as_kafka_checks_them() {
        let ok = acl(1, Topic, "t", Literal, ALICE, Read, Allow);
        assert!(validate_new_acl(&ok).is_ok());
        for bad in [
            acl(1, Topic, "", Literal, ALICE, Read, Allow),
            acl(1, Cluster, "other", Literal, ALICE, Alter, Allow),
            acl(1, Topic, "t", Literal, "alice", Read, Allow),
            acl(1, Group, "g", Literal, ALICE, Write, Allow),
            acl(1, Topic, "*", Prefixed, ALICE, Read, Allow),
        ] {
            let e = validate_new_acl(&bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{bad:?}");
        }
    }
}
