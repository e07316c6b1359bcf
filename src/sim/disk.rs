//! A simulated disk for one controller's Raft log: every write reaches the log's in-memory
//! view at once, and its disk in order after a drawn fsync delay. A crash keeps only what the
//! disk had flushed; writes still queued are lost, as on a real machine that loses power.
//!
//! Appends report completion (openraft's `IOFlushed`) only once flushed; the vote, truncation,
//! purge and the committed hint are awaited until flushed, so they are durable when they
//! return, as the production store's are.

use crate::raft::types::{Entry, LogId, TypeConfig, Vote};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What a log holds: the in-memory view, or what is on the disk.
#[derive(Clone, Debug, Default)]
pub struct LogContent {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
}

impl LogContent {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(entries) => {
                for e in entries {
                    self.entries.insert(e.log_id.index(), e.clone());
                }
            }
            Op::Vote(v) => self.vote = Some(*v),
            Op::Committed(c) => self.committed = *c,
            Op::Truncate(after) => {
                let from = after.map_or(0, |l| l.index() + 1);
                self.entries.split_off(&from);
            }
            Op::Purge(upto) => {
                self.last_purged = Some(*upto);
                self.entries = self.entries.split_off(&(upto.index() + 1));
            }
        }
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(self.last_purged)
    }
}

#[derive(Debug)]
enum Op {
    Append(Vec<Entry>),
    Vote(Vote),
    Committed(Option<LogId>),
    Truncate(Option<LogId>),
    Purge(LogId),
}

enum Done {
    Flushed(IOFlushed<TypeConfig>),
    Waiting(oneshot::Sender<()>),
}

/// One node's disk: survives the node's crashes.
#[derive(Clone, Default)]
pub struct SimDisk {
    flushed: Arc<Mutex<LogContent>>,
}

impl SimDisk {
    /// A store over what this disk holds, flushing through a task that takes `fsync_ms()`
    /// per write. Dropping the returned task handle's task (a crash) loses the queued writes.
    pub fn open(
        &self,
        mut fsync_ms: impl FnMut() -> u64 + Send + 'static,
    ) -> (SimLog, tokio::task::JoinHandle<()>) {
        let view = self.flushed.lock().expect("disk lock").clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<(Op, Done)>();
        let flushed = self.flushed.clone();
        let flusher = tokio::spawn(async move {
            while let Some((op, done)) = rx.recv().await {
                let ms = fsync_ms();
                if ms > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                flushed.lock().expect("disk lock").apply(&op);
                match done {
                    Done::Flushed(cb) => cb.io_completed(Ok(())),
                    Done::Waiting(w) => {
                        let _ = w.send(());
                    }
                }
            }
        });
        (
            SimLog {
                view: Arc::new(Mutex::new(view)),
                disk: tx,
            },
            flusher,
        )
    }

    /// The flushed log end, for reports.
    pub fn last_index(&self) -> Option<u64> {
        self.flushed
            .lock()
            .expect("disk lock")
            .last_log_id()
            .map(|l| l.index())
    }
}

/// openraft's log storage over a [`SimDisk`].
#[derive(Clone)]
pub struct SimLog {
    view: Arc<Mutex<LogContent>>,
    disk: mpsc::UnboundedSender<(Op, Done)>,
}

fn crashed() -> io::Error {
    io::Error::other("the simulated node crashed")
}

impl SimLog {
    fn view(&self) -> std::sync::MutexGuard<'_, LogContent> {
        self.view.lock().expect("view lock")
    }

    async fn write_durably(&self, op: Op) -> io::Result<()> {
        self.view().apply(&op);
        let (tx, rx) = oneshot::channel();
        self.disk
            .send((op, Done::Waiting(tx)))
            .map_err(|_| crashed())?;
        rx.await.map_err(|_| crashed())
    }
}

impl RaftLogReader<TypeConfig> for SimLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self
            .view()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.view().vote)
    }
}

impl RaftLogStorage<TypeConfig> for SimLog {
    type LogReader = SimLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let view = self.view();
        Ok(LogState {
            last_purged_log_id: view.last_purged,
            last_log_id: view.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.write_durably(Op::Vote(*vote)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.write_durably(Op::Committed(committed)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.view().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let op = Op::Append(entries.into_iter().collect());
        self.view().apply(&op);
        self.disk
            .send((op, Done::Flushed(callback)))
            .map_err(|_| crashed())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.write_durably(Op::Truncate(last_log_id)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.write_durably(Op::Purge(log_id)).await
    }
}
