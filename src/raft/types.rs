//! openraft's type configuration for the metadata log.
//!
//! One Raft entry carries a `MetadataBatch`: the records of one controller decision (or of
//! several small ones, such as many offset commits), applied atomically. A record's metadata
//! offset is the index of the Raft entry holding it.

use kmeta_metadata::MetadataRecord;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The records of one Raft entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataBatch(pub Vec<MetadataRecord>);

impl fmt::Display for MetadataBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MetadataBatch({} records)", self.0.len())
    }
}

/// Serialized as a sequence of byte strings, each a record in its versioned encoding
/// (`docs/RECORDS.md`), so the Raft log and the snapshots share one record format.
impl Serialize for MetadataBatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let encoded: Vec<serde_bytes_vec::Bytes> = self
            .0
            .iter()
            .map(|r| serde_bytes_vec::Bytes(r.encode()))
            .collect();
        encoded.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for MetadataBatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let encoded = Vec::<serde_bytes_vec::Bytes>::deserialize(deserializer)?;
        encoded
            .into_iter()
            .map(|b| MetadataRecord::decode(&b.0).map_err(serde::de::Error::custom))
            .collect::<Result<Vec<_>, _>>()
            .map(MetadataBatch)
    }
}

/// A byte string serialized with serde's bytes form (compact in postcard).
mod serde_bytes_vec {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::fmt;

    pub struct Bytes(pub Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(&self.0)
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

/// What applying an entry returns to the proposer: the metadata offset of its records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchApplied {
    /// The index of the Raft entry, which is the metadata offset of every record in it.
    pub offset: u64,
}

openraft::declare_raft_types!(
    /// kmeta's openraft type configuration.
    pub TypeConfig:
        D = MetadataBatch,
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
