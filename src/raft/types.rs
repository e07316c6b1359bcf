//! openraft's type configuration for the metadata log.
//!
//! One Raft entry carries a [`Proposal`]: a `MetadataBatch` (the records of one controller
//! decision, or of several small ones such as many offset commits, applied atomically) and the
//! [`Stamp`] of the active-controller session that decided it. A record's metadata offset is
//! the index of the Raft entry holding it.
//!
//! The stamp makes the speculative-state rule checkable by every replica: the active
//! controller decides each entry against the committed image plus its own earlier proposals,
//! so an entry is sound only if it lands exactly where that session predicted and right after
//! the session's previous entry. [`ProposalChain`] admits exactly those; every other stamped
//! entry (a proposal that outlived a refused predecessor, a leadership change or a pause)
//! commits as a no-op on every controller, and its proposer renounces.

use kmeta_metadata::MetadataRecord;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// The records of one Raft entry, shared: clones share the records and, once made, their
/// encodings.
///
/// An entry's records are encoded for the leader's log, for each follower, for the brokers'
/// tail, and again on each follower for its own log and tail; a follower and the state
/// machine decode them again when they read the log. The encodings are made once (or kept
/// from the bytes they were decoded from) and the records decoded once, so each of those is
/// a copy or a shared reference instead (`docs/RAFT.md`, "Encoded once").
#[derive(Clone, Default)]
pub struct MetadataBatch(Arc<Batch>);

#[derive(Default)]
struct Batch {
    records: Vec<MetadataRecord>,
    /// Each record's versioned encoding (`docs/RECORDS.md`), made on first need.
    encoded: OnceLock<Box<[Vec<u8>]>>,
}

impl MetadataBatch {
    /// A batch of these records.
    pub fn new(records: Vec<MetadataRecord>) -> MetadataBatch {
        MetadataBatch(Arc::new(Batch {
            records,
            encoded: OnceLock::new(),
        }))
    }

    /// The records, in order.
    pub fn records(&self) -> &[MetadataRecord] {
        &self.0.records
    }

    /// The records, copied only if another holder shares them.
    pub fn into_records(self) -> Vec<MetadataRecord> {
        match Arc::try_unwrap(self.0) {
            Ok(batch) => batch.records,
            Err(shared) => shared.records.clone(),
        }
    }

    /// Each record's encoding, made once.
    pub fn encodings(&self) -> &[Vec<u8>] {
        self.0
            .encoded
            .get_or_init(|| self.0.records.iter().map(MetadataRecord::encode).collect())
    }
}

impl PartialEq for MetadataBatch {
    fn eq(&self, other: &Self) -> bool {
        self.records() == other.records()
    }
}

impl Eq for MetadataBatch {}

impl fmt::Debug for MetadataBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MetadataBatch")
            .field(&self.0.records)
            .finish()
    }
}

impl fmt::Display for MetadataBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MetadataBatch({} records)", self.0.records.len())
    }
}

/// Serialized as a sequence of byte strings, each a record in its versioned encoding
/// (`docs/RECORDS.md`), so the Raft log and the snapshots share one record format.
impl Serialize for MetadataBatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let encodings = self.encodings();
        let mut seq = serializer.serialize_seq(Some(encodings.len()))?;
        for e in encodings {
            seq.serialize_element(&serde_bytes_vec::BytesRef(e))?;
        }
        seq.end()
    }
}

/// Decoded record by record; the bytes each came from are kept as its encoding.
impl<'de> Deserialize<'de> for MetadataBatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let encoded = Vec::<serde_bytes_vec::Bytes>::deserialize(deserializer)?;
        let records = encoded
            .iter()
            .map(|b| MetadataRecord::decode(&b.0).map_err(serde::de::Error::custom))
            .collect::<Result<Vec<_>, _>>()?;
        let encodings: Box<[Vec<u8>]> = encoded.into_iter().map(|b| b.0).collect();
        Ok(MetadataBatch(Arc::new(Batch {
            records,
            encoded: OnceLock::from(encodings),
        })))
    }
}

/// A byte string serialized with serde's bytes form (compact in postcard).
mod serde_bytes_vec {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::fmt;

    pub struct Bytes(pub Vec<u8>);

    pub struct BytesRef<'a>(pub &'a [u8]);

    impl Serialize for BytesRef<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element()? {
                        out.push(b);
                    }
                    Ok(Bytes(out))
                }
            }
            deserializer.deserialize_bytes(V)
        }
    }
}

/// One active-controller session: from becoming active until renouncing. Unique: a session
/// leads in one Raft term (one leader per term), and `nonce` tells apart sessions of the same
/// node in one term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionId {
    /// The Raft term the session leads in.
    pub term: u64,
    /// The controller's node id.
    pub node: u64,
    /// Random at process start, then one more per session.
    pub nonce: u64,
}

/// Where a proposal must land to be sound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The session that decided it.
    pub session: SessionId,
    /// The session's first offset: one past the committed log it started from.
    pub first_offset: u64,
    /// The offset its records were decided for.
    pub offset: u64,
}

/// The payload of a Raft entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Who decided it, and where it must land; `None` for raw writes (tests, tools), which
    /// are always applied.
    pub stamp: Option<Stamp>,
    /// The records.
    pub batch: MetadataBatch,
}

impl Proposal {
    /// A raw write, applied wherever it lands.
    pub fn unstamped(batch: MetadataBatch) -> Proposal {
        Proposal { stamp: None, batch }
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.stamp {
            Some(s) => write!(f, "{} at {}", self.batch, s.offset),
            None => write!(f, "{}", self.batch),
        }
    }
}

/// Decides, entry by entry in log order, which stamped entries are applied. Deterministic:
/// every replica applying the same log makes the same choices. Part of the replicated state
/// (snapshots carry it), since the next entry's fate depends on the last one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalChain {
    /// The session of the entry at the last applied index, if that entry was an admitted
    /// stamped proposal.
    last: Option<SessionId>,
}

impl ProposalChain {
    /// Whether the entry at `index` carrying `stamp` is applied, advancing the chain.
    ///
    /// A stamped entry is applied iff it sits at its predicted offset and either opens its
    /// session or directly follows the session's previous (applied) entry. By induction every
    /// applied entry then follows exactly the committed prefix its session started from plus
    /// the session's own earlier proposals: the state it was decided against.
    pub fn admit(&mut self, index: u64, stamp: Option<&Stamp>) -> bool {
        let Some(s) = stamp else {
            self.last = None;
            return true;
        };
        let admitted =
            s.offset == index && (s.offset == s.first_offset || self.last == Some(s.session));
        self.last = admitted.then_some(s.session);
        admitted
    }

    /// An entry without records (Raft's blank or membership entries) breaks every chain.
    pub fn skip(&mut self) {
        self.last = None;
    }
}

/// What applying an entry returns to the proposer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchApplied {
    /// The index of the Raft entry, which is the metadata offset of every record in it.
    pub offset: u64,
    /// False when the entry committed but was not applied: it did not land where its session
    /// predicted (see [`ProposalChain`]).
    pub admitted: bool,
}

openraft::declare_raft_types!(
    /// kmeta's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = BatchApplied,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// A Raft log id in kmeta's configuration.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote in kmeta's configuration.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A Raft entry in kmeta's configuration.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;

#[cfg(test)]
mod tests {
    use super::*;

    const A: SessionId = SessionId {
        term: 3,
        node: 1,
        nonce: 7,
    };
    const B: SessionId = SessionId {
        term: 3,
        node: 1,
        nonce: 8,
    };

    fn stamp(session: SessionId, first_offset: u64, offset: u64) -> Stamp {
        Stamp {
            session,
            first_offset,
            offset,
        }
    }

    fn records() -> Vec<MetadataRecord> {
        use kmeta_metadata::record::{FeatureLevelRecord, TopicRecord};
        vec![
            MetadataRecord::Topic(TopicRecord {
                name: "orders".into(),
                topic_id: uuid::Uuid::from_u128(7),
            }),
            MetadataRecord::FeatureLevel(FeatureLevelRecord {
                name: "metadata.version".into(),
                level: 21,
            }),
        ]
    }

    /// A batch is encoded once and its clones share that encoding; one decoded from bytes
    /// keeps them, and writes out exactly the bytes it came from.
    #[test]
    fn a_batch_is_encoded_once_and_a_decoded_one_writes_back_its_own_bytes() {
        let batch = MetadataBatch::new(records());
        let copy = batch.clone();
        let bytes = postcard::to_allocvec(&batch).unwrap();
        assert!(
            std::ptr::eq(batch.encodings(), copy.encodings()),
            "a clone shares the encodings"
        );
        let expected: Vec<Vec<u8>> = records().iter().map(MetadataRecord::encode).collect();
        assert_eq!(batch.encodings(), expected.as_slice());
        let decoded: MetadataBatch = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, batch);
        assert_eq!(decoded.encodings(), expected.as_slice());
        assert_eq!(postcard::to_allocvec(&decoded).unwrap(), bytes);
        assert_eq!(decoded.into_records(), records());
    }

    #[test]
    fn a_session_landing_in_order_is_admitted_entry_by_entry() {
        let mut chain = ProposalChain::default();
        for i in 10..15 {
            assert!(chain.admit(i, Some(&stamp(A, 10, i))));
        }
    }

    #[test]
    fn a_proposal_after_a_refused_predecessor_is_never_admitted() {
        // Offset 10 was refused; the session's later proposals land one early.
        let mut chain = ProposalChain::default();
        assert!(!chain.admit(10, Some(&stamp(A, 10, 11))));
        assert!(!chain.admit(11, Some(&stamp(A, 10, 12))));
    }

    #[test]
    fn a_stale_session_entry_at_its_predicted_offset_after_another_session_is_refused() {
        // Session A decided 10, 11, 12; 10 was refused; session B started at 10 too, and A's 11
        // landed at 10 (refused), B's first at 11 (refused); A's 12 then lands exactly at 12,
        // but what precedes it is not what A decided it on.
        let mut chain = ProposalChain::default();
        assert!(!chain.admit(10, Some(&stamp(A, 10, 11))));
        assert!(!chain.admit(11, Some(&stamp(B, 10, 10))));
        assert!(!chain.admit(12, Some(&stamp(A, 10, 12))));
    }

    #[test]
    fn a_session_cannot_continue_across_a_blank_or_membership_entry() {
        let mut chain = ProposalChain::default();
        assert!(chain.admit(10, Some(&stamp(A, 10, 10))));
        chain.skip();
        assert!(!chain.admit(12, Some(&stamp(A, 10, 12))));
    }

    #[test]
    fn raw_entries_apply_anywhere_and_break_a_chain() {
        let mut chain = ProposalChain::default();
        assert!(chain.admit(10, Some(&stamp(A, 10, 10))));
        assert!(chain.admit(11, None));
        assert!(!chain.admit(12, Some(&stamp(A, 10, 12))));
        assert!(chain.admit(12, Some(&stamp(B, 12, 12))));
    }
}
