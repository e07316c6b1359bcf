//! The Raft storage adapters pass openraft's conformance suite, and survive a restart.

use kmeta::raft::log_store::LogStore;
use kmeta::raft::state_machine::StateMachine;
use kmeta::raft::types::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        // Small segments so the suite exercises segment rolls, truncation and purges across files.
        let log = LogStore::open_with_segment_bytes(dir.path(), 256).expect("log opens");
        let sm = StateMachine::open(&dir.path().join("sm")).expect("state machine opens");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_store_and_state_machine_pass_openraft_conformance_suite() {
    Suite::test_all(Builder)
        .await
        .expect("conformance suite passes");
}

mod restart {
    use kmeta::raft::log_store::LogStore;
    use kmeta::raft::state_machine::StateMachine;
    use kmeta::raft::types::Entry as KEntry;
    use kmeta::raft::types::{MetadataBatch, Proposal, TypeConfig};
    use kmeta_metadata::record::{MetadataRecord, TopicRecord};
    use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
    use openraft::testing::log_id;
    use openraft::{Entry, EntryPayload, RaftLogReader, RaftSnapshotBuilder};

    fn topic_entry(index: u64) -> kmeta::raft::types::Entry {
        Entry {
            log_id: log_id::<TypeConfig>(2, 1, index),
            payload: EntryPayload::Normal(Proposal::unstamped(MetadataBatch::new(vec![
                MetadataRecord::Topic(TopicRecord {
                    name: format!("topic-{index}"),
                    topic_id: uuid::Uuid::from_u128(index as u128 + 1),
                }),
            ]))),
        }
    }

    async fn apply(sm: &mut StateMachine, entries: Vec<KEntry>) {
        let stream = futures_util::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
        sm.apply(stream).await.expect("entries apply");
    }

    /// Everything written (vote, entries, committed id, snapshot) is there after reopening,
    /// and the image rebuilt from snapshot plus log equals the one before the restart.
    #[tokio::test]
    async fn log_and_image_come_back_the_same_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<_> = (1..=6).map(topic_entry).collect();
        let (hash, vote) = {
            let mut log = LogStore::open(dir.path()).unwrap();
            let mut sm = StateMachine::open(&dir.path().join("sm")).unwrap();
            let vote = openraft::impls::Vote::new_committed(2, 1);
            log.save_vote(&vote).await.unwrap();
            log.append(entries.clone(), IOFlushed::noop())
                .await
                .unwrap();
            log.save_committed(Some(log_id::<TypeConfig>(2, 1, 6)))
                .await
                .unwrap();
            apply(&mut sm, entries[..4].to_vec()).await;
            sm.build_snapshot().await.unwrap();
            log.purge(log_id::<TypeConfig>(2, 1, 3)).await.unwrap();
            apply(&mut sm, entries[4..].to_vec()).await;
            (sm.image().canonical_hash(), vote)
        };
        let mut log = LogStore::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(&dir.path().join("sm")).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(
            log.read_committed().await.unwrap(),
            Some(log_id::<TypeConfig>(2, 1, 6))
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(
            state.last_purged_log_id,
            Some(log_id::<TypeConfig>(2, 1, 3))
        );
        assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(2, 1, 6)));
        let kept = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(
            kept,
            entries[3..].to_vec(),
            "entries up to the purge point are never returned"
        );
        // The snapshot covers 1..=4; replaying the committed log after it restores the image.
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id::<TypeConfig>(2, 1, 4)));
        apply(&mut sm, entries[4..].to_vec()).await;
        assert_eq!(sm.image().canonical_hash(), hash);
        assert_eq!(sm.image().topic_count(), 6);
    }

    /// Saving the committed log id (once per commit) rewrites one file in place: no new file
    /// renamed over it, which ext4 would flush to disk at every commit. A reopened log reads
    /// back the last id saved.
    #[tokio::test]
    async fn the_committed_hint_is_rewritten_in_place_and_read_back() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let hint = dir.path().join("raft-committed");
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            log.append((1..=5).map(topic_entry), IOFlushed::noop())
                .await
                .unwrap();
            log.save_committed(Some(log_id::<TypeConfig>(1, 1, 1)))
                .await
                .unwrap();
            let inode = std::fs::metadata(&hint).unwrap().ino();
            for i in [2, 300, 70_000, 5] {
                log.save_committed(Some(log_id::<TypeConfig>(2, 1, i)))
                    .await
                    .unwrap();
                assert_eq!(
                    std::fs::metadata(&hint).unwrap().ino(),
                    inode,
                    "the hint file was replaced, not rewritten"
                );
            }
        }
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            log.read_committed().await.unwrap(),
            Some(log_id::<TypeConfig>(2, 1, 5))
        );
    }

    /// An append is flushed after it returns (beside the followers' flushes): a committed id
    /// saved meanwhile can outlive the entry in a power loss. A hint naming an entry the log
    /// does not hold is dropped on open, as a torn one is; one the log holds is kept.
    #[tokio::test]
    async fn a_committed_hint_beyond_the_log_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        log.append((1..=3).map(topic_entry), IOFlushed::noop())
            .await
            .unwrap();
        drop(log);
        let held = log_id::<TypeConfig>(2, 1, 3);
        assert_eq!(reopened_with(dir.path(), held).await, Some(held));
        for beyond in [log_id::<TypeConfig>(2, 1, 4), log_id::<TypeConfig>(3, 1, 3)] {
            assert_eq!(reopened_with(dir.path(), beyond).await, None, "{beyond:?}");
        }
    }

    /// Saves `hint` as the committed log id in the log at `dir`, and reads back what a
    /// reopened log takes from it.
    async fn reopened_with(
        dir: &std::path::Path,
        hint: kmeta::raft::types::LogId,
    ) -> Option<kmeta::raft::types::LogId> {
        let mut log = LogStore::open(dir).unwrap();
        log.save_committed(Some(hint)).await.unwrap();
        drop(log);
        LogStore::open(dir).unwrap().read_committed().await.unwrap()
    }

    /// Appends are reported durable in the order they were made, each after its flush, and
    /// a truncation waits for the flushes before it: the entries it keeps are on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_are_reported_flushed_in_order_and_truncation_follows_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open_with_segment_bytes(dir.path(), 512).unwrap();
        let mut flushed = Vec::new();
        for i in 1..=40u64 {
            let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
            log.append([topic_entry(i)], IOFlushed::signal(tx))
                .await
                .unwrap();
            flushed.push(rx);
            // Readable at once, before its flush.
            assert_eq!(log.try_get_log_entries(i..=i).await.unwrap().len(), 1);
        }
        // Once the last is reported, every earlier one has been.
        let last = flushed.pop().unwrap();
        last.await.unwrap().expect("the last flush succeeded");
        for (i, rx) in flushed.into_iter().enumerate() {
            match futures_util::FutureExt::now_or_never(rx) {
                Some(result) => result.unwrap().expect("the flush succeeded"),
                None => panic!("append {} not reported after a later one", i + 1),
            }
        }
        log.truncate_after(Some(log_id::<TypeConfig>(2, 1, 30)))
            .await
            .unwrap();
        drop(log);
        let mut log = LogStore::open_with_segment_bytes(dir.path(), 512).unwrap();
        let kept = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(kept, (1..=30).map(topic_entry).collect::<Vec<_>>());
    }

    /// A record that does not replay stops apply with an error; it is never skipped.
    #[tokio::test]
    async fn a_record_that_does_not_replay_fails_apply() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        apply(&mut sm, vec![topic_entry(1)]).await;
        let mut duplicate = topic_entry(1);
        duplicate.log_id = log_id::<TypeConfig>(2, 1, 2);
        let stream = futures_util::stream::iter([Ok((duplicate, None))]);
        assert!(sm.apply(stream).await.is_err());
        assert_eq!(sm.image().topic_count(), 1);
    }
}
