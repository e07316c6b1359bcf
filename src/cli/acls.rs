//! `kmeta acls`: access control entries, as Kafka's `kafka-acls.sh` adds, lists and removes
//! them, through CreateAcls, DescribeAcls and DeleteAcls.

use super::{print_json, print_table, Admin, Output};
use crate::kafka::wire::sb;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kmeta_metadata::acl::CLUSTER_NAME;
use kmeta_metadata::record::{AclOperation, AclPatternType, AclPermission, AclResourceType};
use serde_json::json;

/// The wire id that stands for "any" in a filter.
const ANY: i8 = 1;
/// The pattern type filter that matches the entries applying to a name.
const MATCH: i8 = 2;

/// The resource the command is about: `--topic`, `--group` or `--cluster`.
#[derive(Clone, Debug, Default)]
pub struct Resource {
    /// `--topic NAME` (`*` for every topic).
    pub topic: Option<String>,
    /// `--group ID`.
    pub group: Option<String>,
    /// `--cluster`.
    pub cluster: bool,
    /// `--resource-pattern-type`: literal or prefixed (and for list and remove: any or
    /// match).
    pub pattern_type: Option<String>,
}

impl Resource {
    fn kind_and_name(&self) -> Result<Option<(AclResourceType, String)>, String> {
        let given = [self.topic.is_some(), self.group.is_some(), self.cluster];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err("give at most one of --topic, --group and --cluster".into());
        }
        Ok(if let Some(t) = &self.topic {
            Some((AclResourceType::Topic, t.clone()))
        } else if let Some(g) = &self.group {
            Some((AclResourceType::Group, g.clone()))
        } else if self.cluster {
            Some((AclResourceType::Cluster, CLUSTER_NAME.to_string()))
        } else {
            None
        })
    }

    /// The pattern type's wire id; `filter` allows any and match (default: any for a
    /// filter, literal for a new entry).
    fn pattern(&self, filter: bool) -> Result<i8, String> {
        match self
            .pattern_type
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None if filter => Ok(ANY),
            None | Some("literal") => Ok(AclPatternType::Literal.id()),
            Some("prefixed") => Ok(AclPatternType::Prefixed.id()),
            Some("any") if filter => Ok(ANY),
            Some("match") if filter => Ok(MATCH),
            Some(other) => Err(format!(
                "--resource-pattern-type: {other:?} is not {}",
                if filter {
                    "literal, prefixed, any or match"
                } else {
                    "literal or prefixed"
                }
            )),
        }
    }
}

/// Who an entry is for and what it allows or denies.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// `--allow-principal` (repeatable).
    pub allow_principals: Vec<String>,
    /// `--deny-principal` (repeatable).
    pub deny_principals: Vec<String>,
    /// `--host` (default `*`).
    pub host: Option<String>,
    /// `--operation` (repeatable; Read, Write, Create, Delete, Alter, Describe,
    /// ClusterAction, DescribeConfigs, AlterConfigs, IdempotentWrite, All).
    pub operations: Vec<String>,
}

fn operations(names: &[String]) -> Result<Vec<AclOperation>, String> {
    names
        .iter()
        .map(|n| {
            AclOperation::from_name(n)
                .ok_or_else(|| format!("--operation: {n:?} is not a Kafka ACL operation"))
        })
        .collect()
}

fn principals(entry: &Entry) -> Vec<(AclPermission, &str)> {
    entry
        .allow_principals
        .iter()
        .map(|p| (AclPermission::Allow, p.as_str()))
        .chain(
            entry
                .deny_principals
                .iter()
                .map(|p| (AclPermission::Deny, p.as_str())),
        )
        .collect()
}

fn name_of<T: Copy + PartialEq>(
    id: i8,
    all: &[T],
    to_id: fn(T) -> i8,
    name: fn(T) -> &'static str,
) -> String {
    all.iter()
        .find(|x| to_id(**x) == id)
        .map_or_else(|| id.to_string(), |x| name(*x).to_string())
}

fn operation_name(id: i8) -> String {
    name_of(id, &AclOperation::ALL, AclOperation::id, AclOperation::name)
}

fn resource_name(id: i8) -> String {
    name_of(
        id,
        &AclResourceType::ALL,
        AclResourceType::id,
        AclResourceType::name,
    )
}

fn pattern_name(id: i8) -> String {
    AclPatternType::from_id(id).map_or_else(|| id.to_string(), |p| p.name().to_string())
}

fn permission_name(id: i8) -> String {
    AclPermission::from_id(id).map_or_else(|| id.to_string(), |p| p.name().to_string())
}

/// Adds an entry for each principal and operation on the resource.
pub async fn add(
    admin: &mut Admin,
    resource: &Resource,
    entry: &Entry,
    output: Output,
) -> Result<(), String> {
    let (kind, name) = resource
        .kind_and_name()?
        .ok_or("give the resource: --topic NAME, --group ID or --cluster")?;
    let pattern = resource.pattern(false)?;
    let who = principals(entry);
    if who.is_empty() {
        return Err("give --allow-principal or --deny-principal (e.g. User:alice)".into());
    }
    let ops = if entry.operations.is_empty() {
        vec![AclOperation::All]
    } else {
        operations(&entry.operations)?
    };
    let host = entry.host.clone().unwrap_or_else(|| "*".into());
    let mut creations = Vec::new();
    let mut rows = Vec::new();
    for (permission, principal) in &who {
        for op in &ops {
            creations.push(
                AclCreation::default()
                    .with_resource_type(kind.id())
                    .with_resource_name(sb(name.clone()))
                    .with_resource_pattern_type(pattern)
                    .with_principal(sb(principal.to_string()))
                    .with_host(sb(host.clone()))
                    .with_operation(op.id())
                    .with_permission_type(permission.id()),
            );
            rows.push((principal.to_string(), permission.name(), op.name()));
        }
    }
    let response = admin
        .send(&CreateAclsRequest::default().with_creations(creations), 1)
        .await?;
    for (r, (principal, permission, op)) in response.results.iter().zip(&rows) {
        if r.error_code != 0 {
            return Err(format!(
                "{permission} {principal} {op}: {}",
                super::error_text(r.error_code, r.error_message.as_ref())
            ));
        }
    }
    let pattern = pattern_name(pattern);
    match output {
        Output::Json => print_json(&json!({
            "resource_type": kind.name(), "resource_name": name, "pattern_type": pattern,
            "host": host,
            "added": rows.iter().map(|(p, perm, op)| json!({"principal": p, "permission": perm, "operation": op})).collect::<Vec<_>>(),
        })),
        Output::Table => {
            for (principal, permission, op) in &rows {
                println!(
                    "Added {permission} {principal} {op} from host {host} on {} {name} ({pattern})",
                    kind.name()
                );
            }
        }
    }
    Ok(())
}

/// The filters `remove` and `list` send: one per principal given (or one for any).
fn filters(resource: &Resource, entry: &Entry) -> Result<Vec<DeleteAclsFilter>, String> {
    let target = resource.kind_and_name()?;
    let pattern = resource.pattern(true)?;
    let ops = operations(&entry.operations)?;
    let ops: Vec<i8> = if ops.is_empty() {
        vec![ANY]
    } else {
        ops.iter().map(|o| o.id()).collect()
    };
    let who: Vec<(i8, Option<String>)> = {
        let given = principals(entry);
        if given.is_empty() {
            vec![(ANY, None)]
        } else {
            given
                .into_iter()
                .map(|(perm, p)| (perm.id(), Some(p.to_string())))
                .collect()
        }
    };
    let mut out = Vec::new();
    for (permission, principal) in &who {
        for op in &ops {
            out.push(
                DeleteAclsFilter::default()
                    .with_resource_type_filter(target.as_ref().map_or(ANY, |(k, _)| k.id()))
                    .with_resource_name_filter(target.as_ref().map(|(_, n)| sb(n.clone())))
                    .with_pattern_type_filter(pattern)
                    .with_principal_filter(principal.clone().map(sb))
                    .with_host_filter(entry.host.clone().map(sb))
                    .with_operation(*op)
                    .with_permission_type(*permission),
            );
        }
    }
    Ok(out)
}

/// Removes the entries the filters match.
pub async fn remove(
    admin: &mut Admin,
    resource: &Resource,
    entry: &Entry,
    output: Output,
) -> Result<(), String> {
    if resource.kind_and_name()?.is_none() && principals(entry).is_empty() {
        return Err(
            "give a resource (--topic, --group, --cluster) or a principal; \
             removing every entry of the cluster needs --topic '*' --resource-pattern-type any and the like"
                .into(),
        );
    }
    let response = admin
        .send(
            &DeleteAclsRequest::default().with_filters(filters(resource, entry)?),
            1,
        )
        .await?;
    let mut removed = Vec::new();
    for r in &response.filter_results {
        if r.error_code != 0 {
            return Err(super::error_text(r.error_code, r.error_message.as_ref()));
        }
        for a in &r.matching_acls {
            removed.push(vec![
                a.principal.to_string(),
                permission_name(a.permission_type),
                operation_name(a.operation),
                a.host.to_string(),
                resource_name(a.resource_type),
                a.resource_name.to_string(),
                pattern_name(a.pattern_type),
            ]);
        }
    }
    print_rows(&removed, output, "removed");
    Ok(())
}

fn print_rows(rows: &[Vec<String>], output: Output, what: &str) {
    match output {
        Output::Json => print_json(&json!({
            what: rows.iter().map(|r| json!({
                "principal": r[0], "permission": r[1], "operation": r[2], "host": r[3],
                "resource_type": r[4], "resource_name": r[5], "pattern_type": r[6],
            })).collect::<Vec<_>>()
        })),
        Output::Table => print_table(
            &[
                "PRINCIPAL",
                "PERMISSION",
                "OPERATION",
                "HOST",
                "RESOURCE",
                "NAME",
                "PATTERN",
            ],
            rows,
        ),
    }
}

/// Lists the entries the filter matches (all, by default).
pub async fn list(
    admin: &mut Admin,
    resource: &Resource,
    entry: &Entry,
    output: Output,
) -> Result<(), String> {
    let mut rows = Vec::new();
    for f in filters(resource, entry)? {
        let request = DescribeAclsRequest::default()
            .with_resource_type_filter(f.resource_type_filter)
            .with_resource_name_filter(f.resource_name_filter)
            .with_pattern_type_filter(f.pattern_type_filter)
            .with_principal_filter(f.principal_filter)
            .with_host_filter(f.host_filter)
            .with_operation(f.operation)
            .with_permission_type(f.permission_type);
        let response = admin.send(&request, 1).await?;
        if response.error_code != 0 {
            return Err(super::error_text(
                response.error_code,
                response.error_message.as_ref(),
            ));
        }
        for r in &response.resources {
            for a in &r.acls {
                rows.push(vec![
                    a.principal.to_string(),
                    permission_name(a.permission_type),
                    operation_name(a.operation),
                    a.host.to_string(),
                    resource_name(r.resource_type),
                    r.resource_name.to_string(),
                    pattern_name(r.pattern_type),
                ]);
            }
        }
    }
    rows.sort();
    rows.dedup();
    print_rows(&rows, output, "acls");
    Ok(())
}
