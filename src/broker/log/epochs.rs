//! The leader-epoch cache of one partition (KIP-101, KIP-279): `(epoch, start offset)` pairs,
//! strictly increasing in both, checkpointed to `leader-epoch-checkpoint` in Kafka's format
//! (a version line `0`, the entry count, then one `epoch offset` line per entry).

use std::io;
use std::path::Path;

/// The file name inside a partition directory.
pub const FILE: &str = "leader-epoch-checkpoint";

/// `(epoch, start offset)` entries.
///
/// One entry is held in place: a log that never had data holds exactly one (every new epoch
/// starts at offset 0 and replaces it), and a broker keeps one cache per hosted replica. As a
/// `Vec` it was a 64-byte allocation each, 38 MiB of a broker hosting a million partitions
/// (heaptrack).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: smallvec::SmallVec<[(i32, i64); 1]>,
}

impl EpochCache {
    /// The entries, oldest first.
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    /// The latest epoch, or -1 when empty.
    pub fn latest_epoch(&self) -> i32 {
        self.entries.last().map_or(-1, |e| e.0)
    }

    /// Records that `epoch` starts at `offset`. True if the cache changed. Entries with an
    /// epoch ≥ `epoch` or a start ≥ `offset` are dropped first, so the cache stays monotonic.
    pub fn assign(&mut self, epoch: i32, offset: i64) -> bool {
        if epoch < 0 {
            return false;
        }
        if let Some(&(e, o)) = self.entries.last() {
            if e == epoch && offset >= o {
                return false;
            }
        }
        self.entries.retain(|(e, o)| *e < epoch && *o < offset);
        self.entries.push((epoch, offset));
        true
    }

    /// Drops entries that start at or after `offset` (log truncation).
    pub fn truncate_from_end(&mut self, offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(_, o)| *o < offset);
        before != self.entries.len()
    }

    /// Moves the log start to `offset`: entries wholly below it go, and the one containing it
    /// starts at it.
    pub fn truncate_from_start(&mut self, offset: i64) -> bool {
        let mut changed = false;
        while self.entries.len() > 1 && self.entries[1].1 <= offset {
            self.entries.remove(0);
            changed = true;
        }
        if let Some(first) = self.entries.first_mut() {
            if first.1 < offset {
                first.1 = offset;
                changed = true;
            }
        }
        changed
    }

    /// Kafka's `endOffsetFor`: the largest epoch ≤ `requested` this log knows, and the offset
    /// where the next higher epoch starts (the log end for the latest epoch). `(-1, -1)` when
    /// `requested` is undefined or newer than every entry.
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        if requested < 0 {
            return (-1, -1);
        }
        let Some(&(latest, _)) = self.entries.last() else {
            return (-1, -1);
        };
        if requested == latest {
            return (requested, log_end);
        }
        if requested > latest {
            return (-1, -1);
        }
        let first = self.entries[0];
        if requested < first.0 {
            return (requested, first.1);
        }
        // The first entry with an epoch above `requested` exists (requested < latest).
        let higher = self
            .entries
            .iter()
            .position(|&(e, _)| e > requested)
            .expect("requested < latest");
        (self.entries[higher - 1].0, self.entries[higher].1)
    }

    /// Reads a checkpoint; a missing file is an empty cache.
    pub fn load(dir: &Path) -> io::Result<EpochCache> {
        let text = match std::fs::read_to_string(dir.join(FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(EpochCache::default()),
            Err(e) => return Err(e),
        };
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed leader-epoch-checkpoint",
            )
        };
        let mut lines = text.lines();
        if lines.next() != Some("0") {
            return Err(bad());
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(bad)?;
        let mut cache = EpochCache::default();
        for _ in 0..count {
            let line = lines.next().ok_or_else(bad)?;
            let mut parts = line.split_whitespace();
            let e: i32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
            let o: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
            cache.assign(e, o);
        }
        Ok(cache)
    }

    /// Writes the checkpoint atomically (a temporary file renamed over the old one).
    pub fn store(&self, dir: &Path) -> io::Result<()> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for (e, o) in &self.entries {
            text.push_str(&format!("{e} {o}\n"));
        }
        super::write_atomically(&dir.join(FILE), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_epoch_is_held_without_an_allocation_of_its_own() {
        assert!(std::mem::size_of::<EpochCache>() <= std::mem::size_of::<Vec<(i32, i64)>>());
        let mut c = EpochCache::default();
        c.assign(3, 0);
        c.assign(4, 0);
        assert_eq!(c.entries(), &[(4, 0)]);
        assert!(!c.entries.spilled());
        c.assign(5, 10);
        assert_eq!(c.entries(), &[(4, 0), (5, 10)]);
    }

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        let mut c = EpochCache::default();
        for (e, o) in entries {
            c.assign(*e, *o);
        }
        c
    }

    #[test]
    fn end_offset_follows_kafkas_rules() {
        let c = cache(&[(1, 0), (3, 10), (5, 20)]);
        assert_eq!(c.end_offset_for(5, 30), (5, 30));
        assert_eq!(c.end_offset_for(4, 30), (3, 20));
        assert_eq!(c.end_offset_for(3, 30), (3, 20));
        assert_eq!(c.end_offset_for(1, 30), (1, 10));
        assert_eq!(c.end_offset_for(0, 30), (0, 0));
        assert_eq!(c.end_offset_for(6, 30), (-1, -1));
        assert_eq!(c.end_offset_for(-1, 30), (-1, -1));
        assert_eq!(EpochCache::default().end_offset_for(0, 0), (-1, -1));
    }

    #[test]
    fn assign_keeps_the_cache_monotonic() {
        let mut c = cache(&[(1, 0), (3, 10), (5, 20)]);
        assert!(!c.assign(5, 25));
        assert!(c.assign(4, 15));
        assert_eq!(c.entries(), &[(1, 0), (3, 10), (4, 15)]);
        assert!(c.truncate_from_end(10));
        assert_eq!(c.entries(), &[(1, 0)]);
        let mut d = cache(&[(1, 0), (3, 10), (5, 20)]);
        d.truncate_from_start(12);
        assert_eq!(d.entries(), &[(3, 12), (5, 20)]);
    }

    #[test]
    fn the_checkpoint_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(&[(0, 0), (2, 7)]);
        c.store(dir.path()).unwrap();
        assert_eq!(EpochCache::load(dir.path()).unwrap(), c);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE)).unwrap(),
            "0\n2\n0 0\n2 7\n"
        );
    }
}
