//! SCRAM credentials (Kafka's `ScramControlManager`): AlterUserScramCredentials decided
//! against the image. The runtime derives the keys from the salted password the client sent;
//! this decides what may change and writes the records.

use crate::error::{ApiError, ErrorCode};
use crate::image::MetadataImage;
use crate::record::{
    MetadataRecord, RemoveUserScramCredentialRecord, ScramMechanism, UserScramCredentialRecord,
};
use std::collections::BTreeMap;

/// One change asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScramAlteration {
    /// Set a credential (the keys already derived).
    Upsert(UserScramCredentialRecord),
    /// Remove `name`'s credential for `mechanism`.
    Delete {
        /// The user.
        name: String,
        /// The mechanism.
        mechanism: ScramMechanism,
    },
}

impl ScramAlteration {
    /// The user it alters.
    pub fn user(&self) -> &str {
        match self {
            ScramAlteration::Upsert(r) => &r.name,
            ScramAlteration::Delete { name, .. } => name,
        }
    }

    fn mechanism(&self) -> ScramMechanism {
        match self {
            ScramAlteration::Upsert(r) => r.mechanism,
            ScramAlteration::Delete { mechanism, .. } => *mechanism,
        }
    }
}

/// The records of `alterations`, and each user's outcome (users in name order). As in Kafka,
/// a user's alterations succeed or fail together: a user named twice for one mechanism is a
/// `DUPLICATE_RESOURCE`, an empty name or an iteration count outside Kafka's bounds an
/// `UNACCEPTABLE_CREDENTIAL`, and removing a credential that does not exist a
/// `RESOURCE_NOT_FOUND`. Other users' alterations go ahead.
pub fn alter_scram_credentials(
    image: &MetadataImage,
    alterations: &[ScramAlteration],
) -> (Vec<MetadataRecord>, BTreeMap<String, Option<ApiError>>) {
    let mut by_user: BTreeMap<&str, Vec<&ScramAlteration>> = BTreeMap::new();
    for a in alterations {
        by_user.entry(a.user()).or_default().push(a);
    }
    let mut records = Vec::new();
    let mut outcomes = BTreeMap::new();
    for (user, changes) in by_user {
        match user_records(image, user, &changes) {
            Ok(mut r) => {
                records.append(&mut r);
                outcomes.insert(user.to_string(), None);
            }
            Err(e) => {
                outcomes.insert(user.to_string(), Some(e));
            }
        }
    }
    (records, outcomes)
}

fn user_records(
    image: &MetadataImage,
    user: &str,
    changes: &[&ScramAlteration],
) -> Result<Vec<MetadataRecord>, ApiError> {
    if user.is_empty() {
        return Err(ApiError::new(
            ErrorCode::UnacceptableCredential,
            "the user name is empty",
        ));
    }
    let mut seen = Vec::new();
    for c in changes {
        if seen.contains(&c.mechanism()) {
            return Err(ApiError::new(
                ErrorCode::DuplicateResource,
                format!(
                    "user {user:?} is altered twice for {} in one request",
                    c.mechanism().name()
                ),
            ));
        }
        seen.push(c.mechanism());
    }
    let mut records = Vec::new();
    for c in changes {
        match c {
            ScramAlteration::Upsert(r) => {
                let bounds = ScramMechanism::MIN_ITERATIONS..=ScramMechanism::MAX_ITERATIONS;
                if !bounds.contains(&r.iterations) {
                    return Err(ApiError::new(
                        ErrorCode::UnacceptableCredential,
                        format!(
                            "{} iterations for {} are outside {}..={}",
                            r.iterations,
                            r.mechanism.name(),
                            bounds.start(),
                            bounds.end()
                        ),
                    ));
                }
                if r.salt.is_empty() || r.stored_key.is_empty() || r.server_key.is_empty() {
                    return Err(ApiError::new(
                        ErrorCode::UnacceptableCredential,
                        "the salt or the salted password is empty",
                    ));
                }
                records.push(MetadataRecord::UserScramCredential((*r).clone()));
            }
            ScramAlteration::Delete { name, mechanism } => {
                if image.scram_credential(name, *mechanism).is_none() {
                    return Err(ApiError::new(
                        ErrorCode::ResourceNotFound,
                        format!("user {name:?} has no {} credential", mechanism.name()),
                    ));
                }
                records.push(MetadataRecord::RemoveUserScramCredential(
                    RemoveUserScramCredentialRecord {
                        name: name.clone(),
                        mechanism: *mechanism,
                    },
                ));
            }
        }
    }
    Ok(records)
}

/// The feature that records a cluster's bootstrap records as written (`kmeta storage format
/// --add-scram`).
pub const BOOTSTRAP_FEATURE: &str = "kmeta.bootstrap";

/// The records a new cluster starts with (`kmeta storage format --add-scram`), and the marker
/// that they were written, unless the image already holds the marker: the first active
/// controller writes them once, whichever controller that is. Only SCRAM credentials are
/// accepted.
pub fn bootstrap(
    image: &MetadataImage,
    records: &[MetadataRecord],
) -> Result<Vec<MetadataRecord>, ApiError> {
    if records.is_empty() || image.features().contains_key(BOOTSTRAP_FEATURE) {
        return Ok(Vec::new());
    }
    if let Some(other) = records
        .iter()
        .find(|r| !matches!(r, MetadataRecord::UserScramCredential(_)))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("a bootstrap record must be a SCRAM credential, not {other:?}"),
        ));
    }
    let mut out = records.to_vec();
    out.push(MetadataRecord::FeatureLevel(
        crate::record::FeatureLevelRecord {
            name: BOOTSTRAP_FEATURE.to_string(),
            level: 1,
        },
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogOffset;

    fn credential(name: &str, mechanism: ScramMechanism, iterations: u32) -> ScramAlteration {
        ScramAlteration::Upsert(UserScramCredentialRecord {
            name: name.into(),
            mechanism,
            salt: vec![1; 16],
            stored_key: vec![2; 32],
            server_key: vec![3; 32],
            iterations,
        })
    }

    fn replayed(image: &mut MetadataImage, records: &[MetadataRecord]) {
        for r in records {
            let next = LogOffset(image.offset().0 + 1);
            image.replay(next, r).unwrap();
        }
    }

    #[test]
    fn bootstrap_records_are_written_once() {
        let mut image = MetadataImage::new();
        let ScramAlteration::Upsert(admin) = credential("admin", ScramMechanism::Sha256, 4096)
        else {
            unreachable!()
        };
        let records = vec![MetadataRecord::UserScramCredential(admin)];
        let first = bootstrap(&image, &records).unwrap();
        assert_eq!(first.len(), 2);
        replayed(&mut image, &first);
        assert!(image
            .scram_credential("admin", ScramMechanism::Sha256)
            .is_some());
        assert_eq!(bootstrap(&image, &records).unwrap(), Vec::new());
        assert!(bootstrap(&MetadataImage::new(), &[MetadataRecord::NoOp]).is_err());
    }

    #[test]
    fn a_credential_is_set_replaced_and_removed_and_a_user_fails_alone() {
        use ScramMechanism::*;
        let mut image = MetadataImage::new();
        let (records, outcomes) = alter_scram_credentials(
            &image,
            &[
                credential("alice", Sha256, 4096),
                credential("alice", Sha512, 8192),
                credential("bob", Sha256, 100),
            ],
        );
        assert_eq!(records.len(), 2);
        assert_eq!(outcomes["alice"], None);
        assert_eq!(
            outcomes["bob"].as_ref().unwrap().code,
            ErrorCode::UnacceptableCredential
        );
        replayed(&mut image, &records);
        assert_eq!(
            image.scram_credential("alice", Sha512).unwrap().iterations,
            8192
        );
        assert!(image.scram_credential("bob", Sha256).is_none());

        // Twice for one mechanism in one request: the user's changes all fail.
        let (records, outcomes) = alter_scram_credentials(
            &image,
            &[
                credential("alice", Sha256, 5000),
                ScramAlteration::Delete {
                    name: "alice".into(),
                    mechanism: Sha256,
                },
            ],
        );
        assert!(records.is_empty());
        assert_eq!(
            outcomes["alice"].as_ref().unwrap().code,
            ErrorCode::DuplicateResource
        );

        let delete = |name: &str| ScramAlteration::Delete {
            name: name.into(),
            mechanism: Sha512,
        };
        let (records, outcomes) =
            alter_scram_credentials(&image, &[delete("alice"), delete("carol")]);
        assert_eq!(outcomes["alice"], None);
        assert_eq!(
            outcomes["carol"].as_ref().unwrap().code,
            ErrorCode::ResourceNotFound
        );
        replayed(&mut image, &records);
        assert!(image.scram_credential("alice", Sha512).is_none());
        assert!(image.scram_credential("alice", Sha256).is_some());
        // A snapshot carries the credentials.
        let mut rebuilt = MetadataImage::new();
        replayed(&mut rebuilt, &image.to_records());
        assert_eq!(
            rebuilt.scram_credentials().collect::<Vec<_>>(),
            image.scram_credentials().collect::<Vec<_>>()
        );
    }
}
