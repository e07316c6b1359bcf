//! The consumer protocol that classic groups carry as opaque bytes: a member's subscription in
//! its JoinGroup metadata, its partitions in the leader's SyncGroup assignment. Each starts
//! with an i16 version; a version newer than `kafka-protocol` knows is read at the newest it
//! knows, since later versions only append fields (Kafka's `ConsumerProtocol` does the same).

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use kafka_protocol::protocol::{Decodable, Message};

fn decode<M: Decodable + Message>(bytes: &Bytes) -> Option<M> {
    let mut b = bytes.clone();
    if b.remaining() < 2 {
        return None;
    }
    let version = b.get_i16();
    if version < M::VERSIONS.min {
        return None;
    }
    M::decode(&mut b, version.min(M::VERSIONS.max)).ok()
}

/// The topics a member subscribes to; empty when the metadata is not the consumer protocol.
pub fn subscription_topics(metadata: &Bytes) -> Vec<String> {
    decode::<ConsumerProtocolSubscription>(metadata)
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

/// A member's assigned `(topic, partition)`s; empty when the bytes are not the consumer
/// protocol (or the assignment is empty).
pub fn assigned_partitions(assignment: &Bytes) -> Vec<(String, i32)> {
    decode::<ConsumerProtocolAssignment>(assignment)
        .map(|a| {
            a.assigned_partitions
                .iter()
                .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.0.to_string(), *p)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    #[test]
    fn subscriptions_and_assignments_decode_at_every_version_and_garbage_decodes_to_nothing() {
        for version in 0..=3i16 {
            let mut b = BytesMut::new();
            b.put_i16(version);
            ConsumerProtocolSubscription::default()
                .with_topics(vec![StrBytes::from_static_str("orders")])
                .encode(&mut b, version)
                .unwrap();
            assert_eq!(subscription_topics(&b.freeze()), vec!["orders".to_string()]);
            let mut b = BytesMut::new();
            b.put_i16(version);
            ConsumerProtocolAssignment::default()
                .with_assigned_partitions(vec![TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(vec![0, 4])])
                .encode(&mut b, version)
                .unwrap();
            assert_eq!(
                assigned_partitions(&b.freeze()),
                vec![("orders".to_string(), 0), ("orders".to_string(), 4)]
            );
        }
        assert!(subscription_topics(&Bytes::from_static(b"\x00")).is_empty());
        assert!(assigned_partitions(&Bytes::from_static(b"\x00\x00\xff\xff\xff")).is_empty());
    }
}
