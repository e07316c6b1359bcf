//! The partitions that changed, in order: a bounded log each fetch session and replica
//! fetcher reads from its own cursor, so that what it looks at per fetch grows with what
//! changed on the broker, not with how many partitions it holds. Beside it, the broker's
//! [`Totals`] (what its metrics report), moved by each change rather than counted by a scan.
//!
//! A partition is pushed whenever its version moves ([`super::partition::Partition::version`]),
//! with its state lock held, so a reader that sees the entry and then takes that lock sees the
//! change. The log keeps the latest [`CAPACITY`] entries; a reader whose cursor fell behind
//! them is told so and looks at everything once, as after a restart.

use kmeta_metadata::TopicIdPartition;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

/// Entries kept (a repeated partition takes one each time; readers skip what they hold no
/// interest in). 256 Ki entries are 5 MiB.
pub const CAPACITY: usize = 1 << 18;

/// See the module documentation.
#[derive(Default)]
pub struct ChangeLog {
    inner: Mutex<Inner>,
    /// What the partitions announced here add up to.
    pub totals: Totals,
}

/// What one hosted replica adds to its broker's [`Totals`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// It leads.
    pub leads: bool,
    /// It leads with an ISR smaller than its replica set.
    pub under_replicated: bool,
    /// It leads with an ISR smaller than its effective `min.insync.replicas`.
    pub under_min_isr: bool,
    /// Its log's size on disk.
    pub log_bytes: u64,
}

/// The sums of [`Health`] over a broker's hosted replicas, kept in step by each replica as
/// it changes (under its own lock), so that reading them costs nothing per partition.
#[derive(Debug, Default)]
pub struct Totals {
    hosted: AtomicI64,
    leading: AtomicI64,
    under_replicated: AtomicI64,
    under_min_isr: AtomicI64,
    log_bytes: AtomicI64,
}

/// A reading of [`Totals`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TotalsNow {
    /// Replicas hosted.
    pub hosted: i64,
    /// Replicas led.
    pub leading: i64,
    /// Led replicas under-replicated.
    pub under_replicated: i64,
    /// Led replicas under their min ISR.
    pub under_min_isr: i64,
    /// Bytes in all hosted logs.
    pub log_bytes: i64,
}

#[cfg(test)]
impl TotalsNow {
    /// Adds one replica's health (tests count replicas one by one to check the totals).
    pub fn add(&mut self, h: Health) {
        self.hosted += 1;
        self.leading += i64::from(h.leads);
        self.under_replicated += i64::from(h.under_replicated);
        self.under_min_isr += i64::from(h.under_min_isr);
        self.log_bytes += h.log_bytes as i64;
    }
}

impl Totals {
    /// A replica starts being counted with `h`.
    pub fn join(&self, h: Health) {
        self.hosted.fetch_add(1, Ordering::Relaxed);
        self.shift(Health::default(), h);
    }

    /// A replica last counted with `h` stops being counted.
    pub fn leave(&self, h: Health) {
        self.hosted.fetch_sub(1, Ordering::Relaxed);
        self.shift(h, Health::default());
    }

    /// A counted replica's health went from `before` to `after`.
    pub fn shift(&self, before: Health, after: Health) {
        let flag = |counter: &AtomicI64, was: bool, is: bool| {
            if was != is {
                counter.fetch_add(if is { 1 } else { -1 }, Ordering::Relaxed);
            }
        };
        flag(&self.leading, before.leads, after.leads);
        flag(
            &self.under_replicated,
            before.under_replicated,
            after.under_replicated,
        );
        flag(
            &self.under_min_isr,
            before.under_min_isr,
            after.under_min_isr,
        );
        if before.log_bytes != after.log_bytes {
            self.log_bytes.fetch_add(
                after.log_bytes as i64 - before.log_bytes as i64,
                Ordering::Relaxed,
            );
        }
    }

    /// The sums now (each exact; read one after another, so a change in between may show in
    /// some and not yet in others).
    pub fn now(&self) -> TotalsNow {
        TotalsNow {
            hosted: self.hosted.load(Ordering::Relaxed),
            leading: self.leading.load(Ordering::Relaxed),
            under_replicated: self.under_replicated.load(Ordering::Relaxed),
            under_min_isr: self.under_min_isr.load(Ordering::Relaxed),
            log_bytes: self.log_bytes.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// The sequence number of `entries[0]`.
    first: u64,
    entries: VecDeque<TopicIdPartition>,
}

/// What changed since a cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// These partitions (in order, possibly repeated).
    Changed(Vec<TopicIdPartition>),
    /// The cursor fell behind what is kept: anything may have changed.
    Everything,
}

impl ChangeLog {
    /// Records that `tp` changed.
    pub fn push(&self, tp: TopicIdPartition) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Room is made first, so the deque never grows past its bound (its capacity would
        // double to hold one more).
        if g.entries.len() >= CAPACITY {
            g.entries.pop_front();
            g.first += 1;
        }
        g.entries.push_back(tp);
    }

    /// The cursor after every entry so far.
    pub fn end(&self) -> u64 {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.first + g.entries.len() as u64
    }

    /// What changed from `cursor` on, and the cursor after it.
    pub fn since(&self, cursor: u64) -> (Since, u64) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let end = g.first + g.entries.len() as u64;
        if cursor < g.first || cursor > end {
            return (Since::Everything, end);
        }
        let from = (cursor - g.first) as usize;
        (
            Since::Changed(g.entries.range(from..).copied().collect()),
            end,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(partition: i32) -> TopicIdPartition {
        TopicIdPartition {
            topic_id: uuid::Uuid::from_u128(7),
            partition,
        }
    }

    #[test]
    fn a_reader_sees_each_change_after_its_cursor_once() {
        let log = ChangeLog::default();
        let start = log.end();
        log.push(tp(1));
        log.push(tp(2));
        let (since, cursor) = log.since(start);
        assert_eq!(since, Since::Changed(vec![tp(1), tp(2)]));
        log.push(tp(3));
        assert_eq!(log.since(cursor).0, Since::Changed(vec![tp(3)]));
        assert_eq!(log.since(log.end()).0, Since::Changed(vec![]));
    }

    #[test]
    fn a_reader_that_fell_behind_is_told_everything_may_have_changed() {
        let log = ChangeLog::default();
        let start = log.end();
        for i in 0..=CAPACITY as i32 {
            log.push(tp(i));
        }
        let (since, cursor) = log.since(start);
        assert_eq!(since, Since::Everything);
        assert_eq!(cursor, log.end());
        assert_eq!(
            log.since(start + 1).0,
            Since::Changed((1..=CAPACITY as i32).map(tp).collect())
        );
    }
}
