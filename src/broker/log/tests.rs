use super::batch::{build, set_base_offset, set_leader_epoch, BatchHeader};
use super::*;

fn batch(base: i64, epoch: i32, values: &[&[u8]], ts: i64) -> Vec<u8> {
    let mut b = build(values, ts, None);
    set_base_offset(&mut b, base);
    set_leader_epoch(&mut b, epoch);
    b
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 300,
        index_interval_bytes: 100,
        ..LogConfig::default()
    }
}

fn offsets(bytes: &[u8]) -> Vec<i64> {
    batch::split(bytes)
        .unwrap()
        .iter()
        .map(|(_, h)| h.base_offset)
        .collect()
}

#[test]
fn a_log_creates_nothing_on_disk_until_its_first_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    let id = uuid::Uuid::new_v4();
    let mut log = PartitionLog::open(path.clone(), id, LogConfig::default()).unwrap();
    log.assign_epoch(0, 0).unwrap();
    assert!(!path.exists());
    assert_eq!(log.read(0, 1 << 20, 10, true).unwrap().len(), 0);
    log.append(&batch(0, 0, &[b"a"], 1)).unwrap();
    assert!(path.join("00000000000000000000.log").exists());
    assert!(path.join("partition.metadata").exists());
}

#[test]
fn reads_return_whole_batches_from_the_one_holding_the_offset_below_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4();
    let mut log = PartitionLog::open(dir.path().join("t-0"), id, small_segments()).unwrap();
    let mut next = 0;
    for i in 0..20 {
        let b = batch(next, 0, &[b"0123456789", b"abcdefghij"], 1_000 + i);
        next += 2;
        log.append(&b).unwrap();
    }
    assert!(log.segment_count() > 3, "segments roll at segment.bytes");
    assert_eq!(log.log_end(), 40);
    // Offset 5 is inside the batch at 4.
    let got = log.read(5, 1 << 20, 40, true).unwrap();
    assert_eq!(offsets(&got)[0], 4);
    // The bound (a high watermark) excludes batches at or above it.
    let got = log.read(0, 1 << 20, 6, true).unwrap();
    assert_eq!(*offsets(&got).last().unwrap(), 4);
    // max_bytes smaller than a batch still returns one with min_one, none without.
    assert_eq!(offsets(&log.read(10, 1, 40, true).unwrap()), vec![10]);
    assert!(log.read(10, 1, 40, false).unwrap().is_empty());
    assert!(log.read(40, 1 << 20, 40, true).unwrap().is_empty());
}

#[test]
fn reopening_rebuilds_the_log_and_a_torn_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4();
    let path = dir.path().join("t-0");
    let mut log = PartitionLog::open(path.clone(), id, small_segments()).unwrap();
    let mut next = 0;
    for epoch in [0, 0, 0, 2, 2, 5, 5, 5] {
        log.append(&batch(next, epoch, &[b"xxxxxxxxxxxxxxxxxxxx"], 7))
            .unwrap();
        next += 1;
    }
    log.assign_epoch(6, next).unwrap();
    let epochs = log.epochs().clone();
    drop(log);
    // A torn write: half a batch at the end of the last segment.
    let last = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap();
    let torn = batch(next, 6, &[b"torn torn torn"], 7);
    let mut f = OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut f, &torn[..torn.len() / 2]).unwrap();
    drop(f);
    let log = PartitionLog::open(path.clone(), id, small_segments()).unwrap();
    assert_eq!(log.log_end(), 8);
    assert_eq!(log.epochs(), &epochs);
    assert_eq!(log.epochs().entries(), &[(0, 0), (2, 3), (5, 5), (6, 8)]);
    let all = log.read(0, 1 << 20, 8, true).unwrap();
    assert!(!all.is_empty());
    // A corrupt byte in the last segment's last batch is cut off too.
    let len = std::fs::metadata(&last).unwrap().len();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[len as usize - 1] ^= 0xff;
    std::fs::write(&last, &bytes).unwrap();
    let log = PartitionLog::open(path, id, small_segments()).unwrap();
    assert_eq!(log.log_end(), 7);
}

#[test]
fn truncation_drops_the_tail_epochs_and_producer_state() {
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4();
    let mut log = PartitionLog::open(dir.path().join("t-0"), id, small_segments()).unwrap();
    for (next, (epoch, seq)) in [(0, 0), (0, 1), (1, 2), (1, 3), (1, 4)]
        .into_iter()
        .enumerate()
    {
        let mut b = build(&[b"v"], 1, Some((9, 0, seq)));
        set_base_offset(&mut b, next as i64);
        set_leader_epoch(&mut b, epoch);
        log.append(&b).unwrap();
    }
    log.truncate_to(2).unwrap();
    assert_eq!(log.log_end(), 2);
    assert_eq!(log.epochs().entries(), &[(0, 0)]);
    // The producer's next sequence is 2 again.
    let mut retry = build(&[b"v"], 1, Some((9, 0, 2)));
    set_base_offset(&mut retry, 2);
    let h = BatchHeader::parse(&retry).unwrap();
    assert_eq!(log.producers().check(&h), Ok(producers::Check::Append));
    log.append(&retry).unwrap();
    assert_eq!(log.log_end(), 3);
    // A follower append must continue at the log end.
    assert!(matches!(
        log.append(&batch(7, 1, &[b"v"], 1)),
        Err(AppendError::UnexpectedOffset {
            expected: 3,
            got: 7
        })
    ));
}

#[test]
fn retention_deletes_whole_old_segments_below_the_high_watermark_only() {
    let dir = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::new_v4();
    let config = LogConfig {
        retention_ms: 1_000,
        ..small_segments()
    };
    let mut log = PartitionLog::open(dir.path().join("t-0"), id, config).unwrap();
    for i in 0..12 {
        log.append(&batch(
            i,
            0,
            &[b"0123456789012345678901234567890123456789"],
            100,
        ))
        .unwrap();
    }
    let segments = log.segment_count();
    assert!(segments >= 4);
    // Nothing is old yet.
    assert_eq!(log.enforce_retention(12, 500).unwrap(), 0);
    // Old, but the high watermark holds everything from offset 0.
    assert_eq!(log.enforce_retention(0, 10_000).unwrap(), 0);
    let deleted = log.enforce_retention(12, 10_000).unwrap();
    assert_eq!(deleted, segments - 1, "all but the active segment");
    assert!(log.log_start() > 0);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(
        offsets(&log.read(log.log_start(), 1 << 20, 12, true).unwrap())[0],
        log.log_start()
    );
}

#[test]
fn a_directory_left_by_a_deleted_topic_of_the_same_name_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t-0");
    let mut log =
        PartitionLog::open(path.clone(), uuid::Uuid::new_v4(), LogConfig::default()).unwrap();
    log.append(&batch(0, 0, &[b"old"], 1)).unwrap();
    drop(log);
    let log = PartitionLog::open(path, uuid::Uuid::new_v4(), LogConfig::default()).unwrap();
    assert_eq!(log.log_end(), 0);
}

#[test]
fn timestamps_find_the_first_batch_that_late() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = PartitionLog::open(
        dir.path().join("t-0"),
        uuid::Uuid::new_v4(),
        small_segments(),
    )
    .unwrap();
    for i in 0..10 {
        log.append(&batch(i, 0, &[b"0123456789"], 100 * i)).unwrap();
    }
    assert_eq!(log.offset_for_timestamp(450).unwrap(), Some((5, 500)));
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 0)));
    assert_eq!(log.offset_for_timestamp(5_000).unwrap(), None);
    assert_eq!(log.max_timestamp(), Some((9, 900)));
}
