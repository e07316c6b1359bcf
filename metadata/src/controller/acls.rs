//! Access control entries (Kafka's `AclControlManager`): CreateAcls and DeleteAcls decided
//! against the image. Each creation and each deletion filter succeeds or fails on its own.

use crate::acl::{validate_new_acl, AclFilter};
use crate::error::ApiError;
use crate::image::MetadataImage;
use crate::record::{AccessControlEntryRecord, MetadataRecord, RemoveAccessControlEntryRecord};
use std::collections::BTreeSet;

/// Whether two entries grant or deny the same thing (all but the id equal).
fn same_binding(a: &AccessControlEntryRecord, b: &AccessControlEntryRecord) -> bool {
    a.resource_type == b.resource_type
        && a.resource_name == b.resource_name
        && a.pattern_type == b.pattern_type
        && a.principal == b.principal
        && a.host == b.host
        && a.operation == b.operation
        && a.permission == b.permission
}

/// The records of `creations` (each with a fresh id from the caller), and each creation's
/// outcome in order. An entry equal to one that exists, or to one earlier in the request,
/// succeeds without a record (as in Kafka); an invalid one fails alone.
pub fn create_acls(
    image: &MetadataImage,
    creations: &[AccessControlEntryRecord],
) -> (Vec<MetadataRecord>, Vec<Option<ApiError>>) {
    let mut records: Vec<MetadataRecord> = Vec::new();
    let mut created: Vec<&AccessControlEntryRecord> = Vec::new();
    let outcomes = creations
        .iter()
        .map(|acl| {
            if let Err(e) = validate_new_acl(acl) {
                return Some(e);
            }
            let exists = image
                .acls_on(acl.resource_type, acl.pattern_type, &acl.resource_name)
                .any(|a| same_binding(a, acl))
                || created.iter().any(|a| same_binding(a, acl));
            if !exists {
                created.push(acl);
                records.push(MetadataRecord::AccessControlEntry(acl.clone()));
            }
            None
        })
        .collect();
    (records, outcomes)
}

/// The records removing every entry a filter matches, and for each filter in order the
/// entries it removes (or its error). An entry two filters match is removed once and
/// reported under the first.
pub fn delete_acls(
    image: &MetadataImage,
    filters: &[Result<AclFilter, ApiError>],
) -> (
    Vec<MetadataRecord>,
    Vec<Result<Vec<AccessControlEntryRecord>, ApiError>>,
) {
    let mut removed: BTreeSet<uuid::Uuid> = BTreeSet::new();
    let mut records = Vec::new();
    let outcomes = filters
        .iter()
        .map(|filter| {
            let filter = filter.as_ref().map_err(Clone::clone)?;
            let matched: Vec<AccessControlEntryRecord> = image
                .acls()
                .filter(|a| filter.matches(a) && removed.insert(a.id))
                .cloned()
                .collect();
            records.extend(matched.iter().map(|a| {
                MetadataRecord::RemoveAccessControlEntry(RemoveAccessControlEntryRecord {
                    id: a.id,
                })
            }));
            Ok(matched)
        })
        .collect();
    (records, outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::PatternFilter;
    use crate::error::ErrorCode;
    use crate::record::{AclOperation, AclPatternType, AclPermission, AclResourceType};
    use crate::types::LogOffset;

    fn acl(n: u128, name: &str, operation: AclOperation) -> AccessControlEntryRecord {
        AccessControlEntryRecord {
            id: uuid::Uuid::from_u128(n),
            resource_type: AclResourceType::Topic,
            resource_name: name.into(),
            pattern_type: AclPatternType::Literal,
            principal: "User:alice".into(),
            host: "*".into(),
            operation,
            permission: AclPermission::Allow,
        }
    }

    /// Replays `records`, checking the image's invariants (the ACL index among them) and
    /// that a snapshot of it rebuilds the same image.
    fn apply(image: &mut MetadataImage, records: &[MetadataRecord]) {
        for r in records {
            let next = LogOffset(image.offset().0 + 1);
            image.replay(next, r).unwrap();
            assert_eq!(crate::invariants::check(image), Vec::<String>::new());
        }
        let mut rebuilt = MetadataImage::new();
        let mut snapshot = Vec::new();
        image.for_each_record(|r| snapshot.push(r));
        for r in &snapshot {
            let next = LogOffset(rebuilt.offset().0 + 1);
            rebuilt.replay(next, r).unwrap();
        }
        assert_eq!(
            rebuilt.acls().collect::<Vec<_>>(),
            image.acls().collect::<Vec<_>>()
        );
        assert_eq!(crate::invariants::check(&rebuilt), Vec::<String>::new());
    }

    #[test]
    fn an_entry_is_created_once_and_a_bad_one_fails_alone() {
        let mut image = MetadataImage::new();
        let bad = AccessControlEntryRecord {
            principal: "nobody".into(),
            ..acl(3, "t", AclOperation::Read)
        };
        let (records, outcomes) = create_acls(
            &image,
            &[
                acl(1, "t", AclOperation::Read),
                acl(2, "t", AclOperation::Read),
                bad,
            ],
        );
        assert_eq!(records.len(), 1, "the same binding twice is one entry");
        assert_eq!(outcomes[0], None);
        assert_eq!(outcomes[1], None);
        assert_eq!(
            outcomes[2].as_ref().unwrap().code,
            ErrorCode::InvalidRequest
        );
        apply(&mut image, &records);
        let (again, outcomes) = create_acls(&image, &[acl(4, "t", AclOperation::Read)]);
        assert!(again.is_empty(), "an existing binding is not written again");
        assert_eq!(outcomes, [None]);
    }

    #[test]
    fn deletion_filters_remove_what_they_match_once() {
        let mut image = MetadataImage::new();
        let (records, _) = create_acls(
            &image,
            &[
                acl(1, "a", AclOperation::Read),
                acl(2, "a", AclOperation::Write),
                acl(3, "b", AclOperation::Read),
            ],
        );
        apply(&mut image, &records);
        let reads = AclFilter {
            resource_type: None,
            resource_name: None,
            pattern: PatternFilter::Any,
            principal: None,
            host: None,
            operation: Some(AclOperation::Read),
            permission: None,
        };
        let on_a = AclFilter {
            resource_name: Some("a".into()),
            operation: None,
            ..reads.clone()
        };
        let (records, outcomes) = delete_acls(&image, &[Ok(reads), Ok(on_a)]);
        let ids = |o: &Result<Vec<AccessControlEntryRecord>, ApiError>| {
            o.as_ref()
                .unwrap()
                .iter()
                .map(|a| a.id.as_u128())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&outcomes[0]), [1, 3]);
        assert_eq!(ids(&outcomes[1]), [2]);
        apply(&mut image, &records);
        assert_eq!(image.acls().count(), 0);
    }
}
