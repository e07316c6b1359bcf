//! Replica placement for new partitions: rack-aware, balanced, deterministic.
//!
//! Brokers are ordered by rack in turn (one from each rack, then the next from each rack, …),
//! so consecutive brokers in the list sit in different racks. Partition `p`'s first replica is
//! the broker at `(start + p) mod n`; each further replica steps forward by a shift that grows
//! every `n` partitions, skipping brokers already chosen and preferring racks not yet used.
//! This spreads leaders and followers evenly, in the spirit of Kafka's rack-aware assignment.
//! The start comes from a seed (the runtime passes bits of the new topic's random id), so
//! placement is a pure function of its inputs.

use crate::error::{ApiError, ErrorCode};
use crate::image::MetadataImage;
use crate::types::BrokerId;
use std::collections::BTreeMap;

/// A broker that may receive replicas, with its rack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsableBroker {
    /// The broker.
    pub id: BrokerId,
    /// Its rack (`None` counts as one rack of its own).
    pub rack: Option<String>,
}

/// Brokers that may receive new replicas: registered, unfenced, not shutting down.
pub fn usable_brokers(image: &MetadataImage) -> Vec<UsableBroker> {
    image
        .brokers()
        .filter(|b| b.is_active())
        .map(|b| UsableBroker {
            id: b.broker_id,
            rack: b.rack.clone(),
        })
        .collect()
}

/// Orders brokers so consecutive entries alternate racks.
fn rack_alternating(brokers: &[UsableBroker]) -> Vec<&UsableBroker> {
    let mut by_rack: BTreeMap<Option<&str>, Vec<&UsableBroker>> = BTreeMap::new();
    for b in brokers {
        by_rack.entry(b.rack.as_deref()).or_default().push(b);
    }
    for list in by_rack.values_mut() {
        list.sort_by_key(|b| b.id);
    }
    let longest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(brokers.len());
    for i in 0..longest {
        for list in by_rack.values() {
            if let Some(b) = list.get(i) {
                out.push(*b);
            }
        }
    }
    out
}

/// Places `count` partitions numbered from `first_partition`, each with `replication_factor`
/// replicas, on `brokers`.
pub fn place_replicas(
    brokers: &[UsableBroker],
    first_partition: i32,
    count: i32,
    replication_factor: i16,
    seed: u64,
    registered: usize,
) -> Result<Vec<Vec<BrokerId>>, ApiError> {
    let rf = replication_factor as usize;
    if brokers.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidReplicationFactor,
            format!(
                "Unable to replicate the partition {rf} time(s): All brokers are currently fenced."
            ),
        ));
    }
    if rf > brokers.len() {
        return Err(ApiError::new(
            ErrorCode::InvalidReplicationFactor,
            format!(
                "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {} broker(s) are active ({registered} registered).",
                brokers.len()
            ),
        ));
    }
    let list = rack_alternating(brokers);
    let n = list.len();
    let rack_count = {
        let mut racks: Vec<Option<&str>> = list.iter().map(|b| b.rack.as_deref()).collect();
        racks.sort();
        racks.dedup();
        racks.len()
    };
    let start = (seed % n as u64) as usize;
    let base_shift = ((seed / n as u64) % n as u64) as usize;
    let mut out = Vec::with_capacity(count.max(0) as usize);
    for p in first_partition..first_partition + count {
        let p = p as usize;
        let first = (start + p) % n;
        let shift = base_shift + p / n;
        let mut chosen: Vec<usize> = vec![first];
        for j in 1..rf {
            let step = |k: usize| (first + 1 + (shift + j - 1 + k) % (n.max(2) - 1)) % n;
            let used_racks: Vec<Option<&str>> =
                chosen.iter().map(|&i| list[i].rack.as_deref()).collect();
            let want_new_rack = used_racks.len() < rack_count;
            let candidate = (0..n)
                .map(step)
                .find(|i| {
                    !chosen.contains(i)
                        && (!want_new_rack || !used_racks.contains(&list[*i].rack.as_deref()))
                })
                .or_else(|| (0..n).map(step).find(|i| !chosen.contains(i)))
                .expect("rf <= n leaves a free broker");
            chosen.push(candidate);
        }
        out.push(chosen.into_iter().map(|i| list[i].id).collect());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn brokers(racks: &[&str]) -> Vec<UsableBroker> {
        racks
            .iter()
            .enumerate()
            .map(|(i, r)| UsableBroker {
                id: BrokerId(i as i32),
                rack: (!r.is_empty()).then(|| r.to_string()),
            })
            .collect()
    }

    #[test]
    fn every_partition_gets_distinct_replicas_and_leaders_spread_evenly() {
        let b = brokers(&["", "", "", ""]);
        let placed = place_replicas(&b, 0, 40, 3, 7, 4).unwrap();
        let mut leaders: BTreeMap<BrokerId, usize> = BTreeMap::new();
        let mut replicas: BTreeMap<BrokerId, usize> = BTreeMap::new();
        for p in &placed {
            assert_eq!(p.len(), 3);
            let mut sorted = p.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "duplicate replica in {p:?}");
            *leaders.entry(p[0]).or_default() += 1;
            for r in p {
                *replicas.entry(*r).or_default() += 1;
            }
        }
        assert!(leaders.values().all(|&c| c == 10), "{leaders:?}");
        assert!(replicas.values().all(|&c| c == 30), "{replicas:?}");
    }

    #[test]
    fn replicas_of_a_partition_land_in_different_racks() {
        let b = brokers(&["a", "a", "b", "b", "c", "c"]);
        for seed in 0..20 {
            for p in place_replicas(&b, 0, 12, 3, seed, 6).unwrap() {
                let mut racks: Vec<_> = p.iter().map(|id| b[id.0 as usize].rack.clone()).collect();
                racks.sort();
                racks.dedup();
                assert_eq!(racks.len(), 3, "seed {seed}: {p:?}");
            }
        }
    }

    #[test]
    fn too_few_brokers_is_invalid_replication_factor() {
        let err = place_replicas(&brokers(&["", ""]), 0, 1, 3, 0, 2).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidReplicationFactor);
        let err = place_replicas(&[], 0, 1, 1, 0, 3).unwrap_err();
        assert!(err.message.contains("All brokers are currently fenced"));
    }
}
