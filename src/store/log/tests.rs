use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::store::{Reader, segment};

const SMALL: Limits = Limits {
    max_messages: u64::MAX,
    max_bytes: 64 << 20,
};

/// Test segments: 32 KiB, so a few hundred records span several files.
const SEGMENT: u64 = 32 << 10;

/// Opens the log in `dir` with [`SMALL`] limits and [`SEGMENT`]-sized segments.
fn open(dir: &Path, fsync: Fsync) -> Log {
    let mut log = Log::open(dir, SMALL, fsync).unwrap();
    log.segment_max = SEGMENT;
    log
}

/// The payload record `seq` carries in these tests: 20 to 419 bytes, derived from `seq`.
fn payload(seq: u64) -> Vec<u8> {
    let len = 20 + (seq * 37 % 400) as usize;
    (0..len).map(|i| (seq as usize * 7 + i) as u8).collect()
}

/// Appends records `from..to` (their payloads from [`payload`]) in batches of `batch`.
fn append_range(log: &mut Log, from: u64, to: u64, batch: usize) {
    let payloads: Vec<Vec<u8>> = (from..to).map(payload).collect();
    let mut seq = from;
    for chunk in payloads.chunks(batch) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        assert_eq!(log.append(&refs).unwrap(), seq);
        seq += chunk.len() as u64;
    }
    assert_eq!(log.next_seq(), to);
}

/// Everything a new reader from `from` returns up to the log's `next_seq`, 100 per call.
fn read_all(log: &Log, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut reader = log.reader(from).unwrap();
    drain(&mut reader, log.next_seq())
}

fn drain(reader: &mut Reader, visible: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let before = out.len();
        let n = reader.read(visible, 100, &mut out).unwrap();
        assert_eq!(out.len(), before + n);
        assert!(n <= 100);
        if n == 0 {
            return out;
        }
    }
}

/// Asserts `records` are exactly `from..to` with their [`payload`]s.
fn assert_records(records: &[(u64, Vec<u8>)], from: u64, to: u64) {
    let seqs: Vec<u64> = records.iter().map(|r| r.0).collect();
    if seqs != (from..to).collect::<Vec<_>>() {
        let first_wrong = (from..to).zip(&seqs).find(|(want, got)| want != *got);
        panic!(
            "expected records {from}..{to}, got {} records from {:?} to {:?}; first mismatch (want, got): {first_wrong:?}",
            seqs.len(),
            seqs.first(),
            seqs.last()
        );
    }
    for (seq, data) in records {
        assert_eq!(*data, payload(*seq), "payload of record {seq}");
    }
}

fn segments(dir: &Path) -> Vec<u64> {
    segment::list(dir).unwrap()
}

fn seg_len(dir: &Path, first: u64) -> u64 {
    fs::metadata(segment::path(dir, first)).unwrap().len()
}

fn last_segment(dir: &Path) -> PathBuf {
    segment::path(dir, *segments(dir).last().unwrap())
}

/// Bytes record `seq` takes on disk.
fn rec_size(seq: u64) -> u64 {
    RECORD_OVERHEAD + payload(seq).len() as u64
}

#[test]
fn round_trip_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let mut log = open(&dir, Fsync::Always);
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!((log.next_seq(), log.acked(), log.len()), (1, 0, 0));
    assert_eq!(log.append(&[]).unwrap(), 1, "an empty batch writes nothing");
    assert_eq!(log.next_seq(), 1);

    append_range(&mut log, 1, 1001, 1);
    append_range(&mut log, 1001, 3001, 64);
    append_range(&mut log, 3001, 4001, 1000);
    assert_eq!(log.len(), 4000);
    let expected_bytes: u64 = (1..4001).map(rec_size).sum();
    assert_eq!(log.bytes(), expected_bytes);

    let files = segments(&dir);
    assert!(files.len() >= 25, "{} segments for ~1 MB", files.len());
    assert_eq!(files[0], 1);
    let on_disk: u64 = files.iter().map(|&f| seg_len(&dir, f)).sum();
    assert_eq!(on_disk, expected_bytes);
    for &f in &files {
        assert!(
            seg_len(&dir, f) <= 128 << 10,
            "segment {f} is over its size"
        );
    }

    assert_records(&read_all(&log, 1), 1, 4001);

    // A record larger than a segment gets one of its own.
    let big = vec![0x5a; 200 << 10];
    assert_eq!(log.append(&[&big, &payload(4002)]).unwrap(), 4001);
    let files = segments(&dir);
    let n = files.len();
    assert_eq!(&files[n - 2..], &[4001, 4002]);
    assert_eq!(seg_len(&dir, 4001), RECORD_OVERHEAD + big.len() as u64);
    let mut reader = log.reader(4000).unwrap();
    let mut out = Vec::new();
    assert_eq!(reader.read(log.next_seq(), 10, &mut out).unwrap(), 3);
    assert_eq!(out[0], (4000, payload(4000)));
    assert_eq!(out[1], (4001, big));
    assert_eq!(out[2], (4002, payload(4002)));
    assert_eq!(reader.position(), 4003);
}

#[test]
fn reopen_keeps_sequence_acks_stream_and_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let mut log = open(&dir, Fsync::Periodic);
    let stream = log.stream_id();
    assert_ne!(stream, 0);
    append_range(&mut log, 1, 2001, 50);
    log.ack(700).unwrap();
    log.sync().unwrap();
    let bytes = log.bytes();
    drop(log);

    let mut log = open(&dir, Fsync::Periodic);
    assert_eq!(log.stream_id(), stream);
    assert_eq!(log.next_seq(), 2001);
    assert_eq!(log.acked(), 700);
    assert_eq!(log.len(), 1300);
    assert_eq!(log.bytes(), bytes);
    assert_records(&read_all(&log, 1), 701, 2001);
    append_range(&mut log, 2001, 2101, 7);
    drop(log);

    let log = open(&dir, Fsync::Never);
    assert_eq!((log.next_seq(), log.acked()), (2101, 700));
    assert_records(&read_all(&log, 701), 701, 2101);

    let other = open(&tmp.path().join("other"), Fsync::Never);
    assert_ne!(
        other.stream_id(),
        stream,
        "each new log gets its own stream id"
    );
}

#[test]
fn ack_deletes_whole_segments_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir, Fsync::Always);
    append_range(&mut log, 1, 3001, 100);
    let files = segments(dir);
    assert!(files.len() >= 5);
    let total = log.bytes();
    let sizes: Vec<u64> = files.iter().map(|&f| seg_len(dir, f)).collect();

    // Half way into the third segment: the first two go, the third stays.
    let upto = (files[2] + files[3]) / 2;
    log.ack(upto).unwrap();
    assert_eq!(segments(dir), files[2..].to_vec());
    assert_eq!(log.bytes(), total - sizes[0] - sizes[1]);
    assert_eq!(log.acked(), upto);
    assert_eq!(log.len(), 3000 - upto);
    // Readers start after the acknowledged records, even when asked for earlier ones.
    assert_records(&read_all(&log, 1), upto + 1, 3001);

    // Going backwards changes nothing.
    log.ack(5).unwrap();
    assert_eq!(log.acked(), upto);
    // Exactly the end of the third segment frees it.
    log.ack(files[3] - 1).unwrap();
    assert_eq!(segments(dir), files[3..].to_vec());
    assert_eq!(log.bytes(), total - sizes[0] - sizes[1] - sizes[2]);
    // Beyond the end is clamped. Everything is acknowledged, and the active segment holds more
    // than an eighth of a segment: it is replaced by an empty one named after the next number,
    // which keeps the numbering.
    let last = *files.last().unwrap();
    assert!(seg_len(dir, last) >= SEGMENT / 8);
    log.ack(1_000_000).unwrap();
    assert_eq!(log.acked(), 3000);
    assert_eq!(log.len(), 0);
    assert!(log.is_empty());
    assert_eq!(segments(dir), vec![3001]);
    assert_eq!((log.bytes(), seg_len(dir, 3001)), (0, 0));
    assert!(read_all(&log, 1).is_empty());
    drop(log);

    let mut log = open(dir, Fsync::Always);
    assert_eq!((log.next_seq(), log.acked()), (3001, 3000));
    assert_eq!(log.append(&[b"after"]).unwrap(), 3001);
}

#[test]
fn full_refuses_the_whole_batch_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let limits = Limits {
        max_messages: 10,
        max_bytes: u64::MAX,
    };
    let mut log = Log::open(dir, limits, Fsync::Never).unwrap();
    append_range(&mut log, 1, 9, 4);
    let three = [payload(9), payload(10), payload(11)];
    let refs: Vec<&[u8]> = three.iter().map(Vec::as_slice).collect();
    let bytes = log.bytes();
    match log.append(&refs) {
        Err(AppendError::Full {
            messages: 8,
            bytes: b,
        }) => assert_eq!(b, bytes),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!((log.next_seq(), log.bytes()), (9, bytes));
    assert_eq!(
        seg_len(dir, 1),
        bytes,
        "nothing of the refused batch was written"
    );
    log.ack(1).unwrap();
    assert_eq!(log.append(&refs).unwrap(), 9);
    assert_records(&read_all(&log, 2), 2, 12);
    drop(log);

    // Bytes: a 200 kB budget (64 KiB segments) of 1000-byte records.
    let dir = tmp.path().join("bytes");
    let limits = Limits {
        max_messages: u64::MAX,
        max_bytes: 200_000,
    };
    let mut log = Log::open(&dir, limits, Fsync::Never).unwrap();
    let rec = vec![7u8; 1000 - RECORD_OVERHEAD as usize];
    let mut accepted = 0u64;
    loop {
        match log.append(&[&rec, &rec]) {
            Ok(_) => accepted += 2,
            Err(AppendError::Full { messages, bytes }) => {
                assert_eq!((messages, bytes), (accepted, log.bytes()));
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(accepted, 200);
    assert_eq!(log.bytes(), 200_000);
    assert!(matches!(log.append(&[b"x"]), Err(AppendError::Full { .. })));
    assert_eq!(log.next_seq(), 201);
    // A record that can never fit is TooLarge, not Full.
    let huge = vec![0u8; 200_000];
    assert!(matches!(
        log.append(&[b"ok", &huge]),
        Err(AppendError::TooLarge(200_000))
    ));
    assert!(matches!(
        log.append(&[&vec![0u8; MAX_RECORD + 1]]),
        Err(AppendError::TooLarge(_))
    ));
    // Acknowledging the first segment frees room.
    let first_segment_records = segments(&dir)[1] - 1;
    log.ack(first_segment_records).unwrap();
    assert!(log.bytes() <= 200_000 - first_segment_records * 1000);
    assert_eq!(log.append(&[&rec]).unwrap(), 201);
    drop(log);

    // Once everything is acknowledged, all of it is free, even what sits in the active segment
    // (here too little of a segment to be replaced at the acknowledgement).
    let dir = tmp.path().join("drained");
    let mut log = Log::open(&dir, limits, Fsync::Never).unwrap();
    log.segment_max = 2_000_000;
    let batch: Vec<&[u8]> = vec![&rec; 140];
    assert_eq!(log.append(&batch).unwrap(), 1);
    log.ack(140).unwrap();
    assert_eq!((log.bytes(), segments(&dir)), (140_000, vec![1]));
    let batch: Vec<&[u8]> = vec![&rec; 100];
    assert_eq!(log.append(&batch).unwrap(), 141);
    assert_eq!((log.bytes(), segments(&dir)), (100_000, vec![141]));
    let mut out = Vec::new();
    let mut reader = log.reader(1).unwrap();
    assert_eq!(reader.read(log.next_seq(), 1000, &mut out).unwrap(), 100);
    assert_eq!(out[0].0, 141);
}

/// Writes 300 records over several segments into `dir` and returns the last segment's first seq.
fn populated(dir: &Path) -> u64 {
    let mut log = open(dir, Fsync::Never);
    append_range(&mut log, 1, 1001, 10);
    let files = segments(dir);
    assert!(files.len() >= 3);
    *files.last().unwrap()
}

/// Reopens `dir` after damage and checks: records `1..good_end` are intact, the numbering
/// continues at `good_end`, and new records survive another reopen together with the old ones.
fn check_recovered(dir: &Path, good_end: u64) {
    let mut log = open(dir, Fsync::Never);
    assert_eq!(log.next_seq(), good_end);
    let kept = read_all(&log, 1);
    assert_records(&kept, 1, good_end);
    append_range(&mut log, good_end, good_end + 50, 9);
    drop(log);
    let log = open(dir, Fsync::Never);
    assert_eq!(log.next_seq(), good_end + 50);
    assert_records(&read_all(&log, 1), 1, good_end + 50);
    let expected: u64 = (1..good_end + 50).map(rec_size).sum();
    assert_eq!(log.bytes(), expected, "damaged bytes were cut off");
}

#[test]
fn recovers_from_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    populated(tmp.path());
    let last = last_segment(tmp.path());
    let len = fs::metadata(&last).unwrap().len();
    // Cut record 1000 short (keeping more than its header).
    let cut = len - rec_size(1000) + RECORD_OVERHEAD + 3;
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(cut)
        .unwrap();
    check_recovered(tmp.path(), 1000);

    // A header cut in half.
    let tmp = tempfile::tempdir().unwrap();
    populated(tmp.path());
    let last = last_segment(tmp.path());
    let len = fs::metadata(&last).unwrap().len();
    let cut = len - rec_size(1000) - rec_size(999) + 5;
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(cut)
        .unwrap();
    check_recovered(tmp.path(), 999);
}

#[test]
fn recovers_from_garbage_after_the_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    populated(tmp.path());
    let last = last_segment(tmp.path());
    let mut data = fs::read(&last).unwrap();
    data.extend_from_slice(&[0xff; 37]);
    fs::write(&last, &data).unwrap();
    check_recovered(tmp.path(), 1001);

    // Zeros, as a filesystem leaves after a crash that extended the file.
    let tmp = tempfile::tempdir().unwrap();
    populated(tmp.path());
    let last = last_segment(tmp.path());
    let mut data = fs::read(&last).unwrap();
    data.extend_from_slice(&[0; 4096]);
    fs::write(&last, &data).unwrap();
    check_recovered(tmp.path(), 1001);

    // A stale but well-formed record (an old one replayed): caught by its sequence number.
    let tmp = tempfile::tempdir().unwrap();
    let first = populated(tmp.path());
    let last = last_segment(tmp.path());
    let mut data = fs::read(&last).unwrap();
    let stale = data[..rec_size(first) as usize].to_vec();
    data.extend_from_slice(&stale);
    fs::write(&last, &data).unwrap();
    check_recovered(tmp.path(), 1001);
}

#[test]
fn recovers_from_a_flipped_byte_in_the_last_record() {
    for at in [2usize, 5, 9, 30] {
        // `at` bytes into record 1000: in its length, CRC, seq, payload.
        let tmp = tempfile::tempdir().unwrap();
        populated(tmp.path());
        let last = last_segment(tmp.path());
        let mut data = fs::read(&last).unwrap();
        let start = data.len() - rec_size(1000) as usize;
        data[start + at] ^= 0x10;
        fs::write(&last, &data).unwrap();
        check_recovered(tmp.path(), 1000);
    }
}

#[test]
fn damage_in_an_older_segment_keeps_the_later_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    populated(dir);
    let files = segments(dir);
    // Flip a payload byte of record files[1] + 10, in the second segment.
    let bad = files[1] + 10;
    let path = segment::path(dir, files[1]);
    let mut data = fs::read(&path).unwrap();
    let offset: u64 = (files[1]..bad).map(rec_size).sum();
    data[offset as usize + RECORD_OVERHEAD as usize + 1] ^= 1;
    fs::write(&path, &data).unwrap();

    let mut log = open(dir, Fsync::Never);
    assert_eq!(log.next_seq(), 1001);
    assert_eq!(segments(dir), files, "no segment was dropped");
    assert_eq!(seg_len(dir, files[1]), offset, "cut at the damaged record");
    let got = read_all(&log, 1);
    assert_records(&got[..(bad - 1) as usize], 1, bad);
    assert_records(&got[(bad - 1) as usize..], files[2], 1001);
    // A reader starting inside the gap resumes at the next segment.
    assert_records(&read_all(&log, bad + 2), files[2], 1001);
    assert_eq!(log.append(&[&payload(1001)]).unwrap(), 1001);
    drop(log);

    // A segment damaged at its very first record is left empty, and goes.
    let path = segment::path(dir, files[2]);
    let mut data = fs::read(&path).unwrap();
    data[RECORD_OVERHEAD as usize] ^= 1;
    fs::write(&path, &data).unwrap();
    let log = open(dir, Fsync::Never);
    assert!(!segments(dir).contains(&files[2]));
    assert_eq!(log.next_seq(), 1002);
    let got = read_all(&log, bad);
    assert_records(&got[..got.len() - 1], files[3], 1001);
}

#[test]
fn acknowledged_numbers_are_not_reused_when_the_tail_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir, Fsync::Never);
    append_range(&mut log, 1, 11, 10);
    log.ack(10).unwrap();
    drop(log);
    // Power loss took records 6..=10 but the acked file already said 10.
    let keep: u64 = (1..6).map(rec_size).sum();
    fs::OpenOptions::new()
        .write(true)
        .open(segment::path(dir, 1))
        .unwrap()
        .set_len(keep)
        .unwrap();
    let mut log = open(dir, Fsync::Never);
    assert_eq!((log.next_seq(), log.acked(), log.len()), (11, 10, 0));
    assert_eq!(log.append(&[&payload(11)]).unwrap(), 11);
    assert_records(&read_all(&log, 1), 11, 12);
}

#[test]
fn a_lost_stream_file_starts_a_new_stream_and_keeps_the_numbering() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir, Fsync::Always);
    let stream = log.stream_id();
    append_range(&mut log, 1, 21, 5);
    drop(log);
    let mut data = fs::read(dir.join("stream")).unwrap();
    for slot in data.chunks_mut(4096) {
        slot[13] ^= 0xff;
    }
    fs::write(dir.join("stream"), &data).unwrap();
    let log = open(dir, Fsync::Always);
    assert_ne!(log.stream_id(), stream);
    assert_eq!(log.next_seq(), 21);
    let renewed = log.stream_id();
    drop(log);
    assert_eq!(open(dir, Fsync::Always).stream_id(), renewed);
}

#[test]
fn a_reader_sees_records_as_visible_grows() {
    let tmp = tempfile::tempdir().unwrap();
    let mut log = open(tmp.path(), Fsync::Never);
    let mut reader = log.reader(1).unwrap();
    let mut out = Vec::new();
    assert_eq!(reader.read(log.next_seq(), 100, &mut out).unwrap(), 0);
    append_range(&mut log, 1, 6, 5);
    // Written but not yet visible to this reader's caller.
    assert_eq!(reader.read(3, 100, &mut out).unwrap(), 2);
    assert_eq!(reader.read(3, 100, &mut out).unwrap(), 0);
    assert_eq!(reader.position(), 3);
    assert_eq!(reader.read(log.next_seq(), 100, &mut out).unwrap(), 3);
    assert_eq!(reader.read(log.next_seq(), 100, &mut out).unwrap(), 0);
    // Across several segment rotations, a little at a time.
    for to in (106..=2006).step_by(100) {
        let from = log.next_seq();
        append_range(&mut log, from, to, 33);
        reader.read(log.next_seq(), 60, &mut out).unwrap();
    }
    out.extend(drain(&mut reader, log.next_seq()));
    assert_records(&out, 1, 2006);
    assert!(segments(tmp.path()).len() >= 4);
    assert_eq!(reader.position(), 2006);
}

#[test]
fn a_reader_starts_mid_segment_and_skips_deleted_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir, Fsync::Never);
    append_range(&mut log, 1, 1501, 100);
    let files = segments(dir);
    let mid = files[1] + 17;
    let mut reader = log.reader(mid).unwrap();
    assert_eq!(reader.position(), mid);
    let mut out = Vec::new();
    assert_eq!(reader.read(log.next_seq(), 1, &mut out).unwrap(), 1);
    assert_eq!(out, vec![(mid, payload(mid))]);
    assert_eq!(reader.read(log.next_seq(), 0, &mut out).unwrap(), 0);

    // A reader made before an ack deleted the segments it would have started in.
    let mut early = log.reader(1).unwrap();
    let mut inside = log.reader(1).unwrap();
    let mut first = Vec::new();
    assert_eq!(inside.read(log.next_seq(), 2, &mut first).unwrap(), 2);
    log.ack(files[3] - 1).unwrap();
    assert_eq!(segments(dir)[0], files[3]);
    assert_records(&drain(&mut early, log.next_seq()), files[3], 1501);
    // One already inside a deleted segment finishes it through its open file, then moves on.
    assert_records(&drain(&mut inside, log.next_seq())[..10], 3, 13);
    assert_eq!(inside.position(), 1501);
}

#[test]
fn sync_and_periodic_policy_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir, Fsync::Periodic);
    append_range(&mut log, 1, 1001, 100);
    log.sync().unwrap();
    log.ack(500).unwrap();
    log.sync().unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open(dir, Fsync::Periodic);
    assert_eq!((log.acked(), log.next_seq()), (500, 1001));
    assert_records(&read_all(&log, 1), 501, 1001);
}

#[test]
fn a_lost_acked_file_replays_from_the_oldest_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir, Fsync::Always);
    append_range(&mut log, 1, 1001, 100);
    let files = segments(dir);
    log.ack(files[2] + 5).unwrap();
    drop(log);
    fs::remove_file(dir.join("acked")).unwrap();
    // Only fully acknowledged segments were deleted: everything before the oldest one was acked.
    let log = open(dir, Fsync::Always);
    assert_eq!((log.acked(), log.next_seq()), (files[2] - 1, 1001));
    assert_records(&read_all(&log, 1), files[2], 1001);
}

#[test]
fn a_failed_append_is_rolled_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir, Fsync::Always);
    append_range(&mut log, 1, 11, 10);
    let (bytes, size) = (log.bytes(), seg_len(dir, 1));
    // The batch fills the first segment, then cannot create the next one.
    let mut rotate_at = 11;
    let mut filled = size;
    while filled + rec_size(rotate_at) <= SEGMENT {
        filled += rec_size(rotate_at);
        rotate_at += 1;
    }
    let end = rotate_at + 5;
    let payloads: Vec<Vec<u8>> = (11..end).map(payload).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let blocker = segment::path(dir, rotate_at);
    fs::create_dir(&blocker).unwrap();
    let e = match log.append(&refs) {
        Err(AppendError::Io(e)) => e,
        other => panic!("expected an I/O error, got {other:?}"),
    };
    fs::remove_dir(&blocker).unwrap();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!((log.next_seq(), log.bytes()), (11, bytes));
    assert_eq!(
        seg_len(dir, 1),
        size,
        "the part written to the first segment was undone"
    );
    assert_eq!(segments(dir), vec![1]);
    // The log goes on as if the batch had never been tried.
    assert_eq!(log.append(&refs).unwrap(), 11);
    drop(log);
    let log = open(dir, Fsync::Always);
    assert_records(&read_all(&log, 1), 1, end);
}

#[test]
fn skip_to_moves_the_numbering_past_what_a_peer_has_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir, Fsync::Always);
    append_range(&mut log, 1, 6, 5);
    log.skip_to(3).unwrap(); // not forward: nothing happens
    assert_eq!(log.next_seq(), 6);
    // The peer says it processed up to 9, which this log lost (say) in a power cut.
    log.skip_to(10).unwrap();
    assert_eq!((log.next_seq(), log.len()), (10, 9));
    log.ack(9).unwrap();
    assert_eq!((log.acked(), log.len()), (9, 0));
    assert_eq!(
        segments(dir),
        vec![10],
        "the segment before the skip is all acknowledged"
    );
    append_range(&mut log, 10, 13, 3);
    drop(log);
    let log = open(dir, Fsync::Always);
    assert_eq!((log.next_seq(), log.acked()), (13, 9));
    assert_records(&read_all(&log, 1), 10, 13);

    // Without an ack, the records before the skip stay readable and the reader jumps the gap.
    let tmp = tempfile::tempdir().unwrap();
    let mut log = open(tmp.path(), Fsync::Never);
    append_range(&mut log, 1, 4, 3);
    log.skip_to(8).unwrap();
    append_range(&mut log, 8, 10, 2);
    drop(log);
    let log = open(tmp.path(), Fsync::Never);
    let got = read_all(&log, 1);
    assert_records(&got[..3], 1, 4);
    assert_records(&got[3..], 8, 10);
}

#[test]
fn a_reader_follows_when_a_drained_segment_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut log = open(dir, Fsync::Always);
    append_range(&mut log, 1, 101, 10);
    let mut reader = log.reader(1).unwrap();
    assert_records(&drain(&mut reader, log.next_seq()), 1, 101);
    log.ack(100).unwrap();
    assert_eq!(segments(dir), vec![101], "replaced by an empty segment");
    append_range(&mut log, 101, 111, 3);
    // The reader was at the end of the deleted segment: it moves on to the new one.
    assert_records(&drain(&mut reader, log.next_seq()), 101, 111);
}

/// Appends 1000-byte records one at a time until the disk is full; returns how many fit.
fn append_until_no_space(log: &mut Log) -> u64 {
    let rec = vec![3u8; 1000];
    let mut n = 0;
    loop {
        match log.append(&[&rec]) {
            Ok(_) => n += 1,
            Err(AppendError::NoSpace(e)) => {
                assert!(e.to_string().contains("No space left"), "{e}");
                return n;
            }
            Err(e) => panic!("after {n} records: {e}"),
        }
    }
}

use crate::store::testfs::{self, on_small_fs};

#[test]
fn acknowledged_space_is_reclaimed_on_a_full_disk_whatever_the_segment_size() {
    on_small_fs(
        "store::log::tests::acknowledged_space_is_reclaimed_on_a_full_disk_whatever_the_segment_size",
        "1m",
        |root| {
            let dir = root.join("q");
            let mut log = Log::open(&dir, Limits::UNLIMITED, Fsync::Always).unwrap();
            assert_eq!(log.segment_max, 128 << 10, "an eighth of the filesystem");
            // As large as segments get on a large disk: the whole backlog stays in one.
            log.segment_max = SEGMENT_BYTES;
            let n = append_until_no_space(&mut log);
            assert!(n > 500, "{n} records of 1000 bytes on 1 MiB");
            assert_eq!(segments(&dir), vec![1]);
            assert!(!dir.join("acked").exists(), "nothing acknowledged yet");

            // Everything acknowledged: the `acked` file cannot even be created on the full
            // disk, but the segment is replaced, and with the space it frees the position is
            // written.
            log.ack(n).unwrap();
            assert_eq!((log.acked(), log.bytes()), (n, 0));
            assert_eq!(segments(&dir), vec![n + 1]);
            assert!(
                !log.acked_unsaved,
                "the position was written once there was room"
            );
            // The disk is usable again, all but the pages of the `acked` file.
            let again = append_until_no_space(&mut log);
            assert!(again + 16 >= n, "{again} records fit again, {n} at first");
            drop(log);

            let log = Log::open(&dir, Limits::UNLIMITED, Fsync::Always).unwrap();
            assert_eq!((log.acked(), log.next_seq()), (n, n + again + 1));
            assert_eq!(log.len(), again);
        },
    );
}

#[test]
fn a_position_held_back_by_a_full_disk_is_written_later() {
    on_small_fs(
        "store::log::tests::a_position_held_back_by_a_full_disk_is_written_later",
        "1m",
        |root| {
            let dir = root.join("q");
            let mut log = Log::open(&dir, Limits::UNLIMITED, Fsync::Periodic).unwrap();
            append_range(&mut log, 1, 201, 20);
            let segments_before = segments(&dir);
            let filler = testfs::fill(root);
            // Not a whole segment: nothing to delete, and no room for the `acked` file.
            log.ack(50).unwrap();
            assert_eq!(log.acked(), 50, "the acknowledgement takes effect");
            assert!(log.acked_unsaved);
            assert!(!dir.join("acked").exists(), "no empty file left behind");
            assert_eq!(segments(&dir), segments_before);
            assert_records(&read_all(&log, 1), 51, 201);
            let refused = log.append(&[&[7u8; 8192]]);
            assert!(
                matches!(refused, Err(AppendError::NoSpace(_))),
                "{refused:?}"
            );
            assert_eq!(log.next_seq(), 201, "rolled back");

            // Room again: the next sync writes it, and appends go on.
            fs::remove_file(filler).unwrap();
            log.sync().unwrap();
            assert!(!log.acked_unsaved);
            append_range(&mut log, 201, 211, 10);
            drop(log);
            let log = Log::open(&dir, Limits::UNLIMITED, Fsync::Periodic).unwrap();
            assert_eq!((log.acked(), log.next_seq()), (50, 211));

            // Once written, the file is updated in place: positions are recorded on a full
            // disk too.
            let mut log = log;
            let filler = testfs::fill(root);
            for upto in [60, 70, 80] {
                log.ack(upto).unwrap();
                assert!(!log.acked_unsaved, "ack({upto}) on a full disk");
            }
            drop(log);
            fs::remove_file(filler).unwrap();
            assert_eq!(
                Log::open(&dir, Limits::UNLIMITED, Fsync::Periodic)
                    .unwrap()
                    .acked(),
                80
            );
        },
    );
}

#[test]
fn a_new_log_opens_on_a_full_disk_and_appends_once_there_is_room() {
    on_small_fs(
        "store::log::tests::a_new_log_opens_on_a_full_disk_and_appends_once_there_is_room",
        "1m",
        |root| {
            let filler = testfs::fill(root);
            let dir = root.join("q");
            let mut log = Log::open(&dir, Limits::UNLIMITED, Fsync::Always).unwrap();
            let stream = log.stream_id();
            assert!(log.stream_unsaved);
            assert!(!dir.join("stream").exists());
            // No record before the stream id is on disk: a restart would pick another one.
            assert!(matches!(
                log.append(&[b"first"]),
                Err(AppendError::NoSpace(_))
            ));
            fs::remove_file(filler).unwrap();
            assert_eq!(log.append(&[b"first"]).unwrap(), 1);
            drop(log);
            let log = Log::open(&dir, Limits::UNLIMITED, Fsync::Always).unwrap();
            assert_eq!((log.stream_id(), log.next_seq()), (stream, 2));
        },
    );
}

/// How many of this process's descriptors are open on segment files in `dir`.
fn open_segments(dir: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter(|t| t.starts_with(dir) && t.extension().is_some_and(|x| x == "seg"))
        .count()
}

#[test]
fn an_idle_log_holds_no_descriptor() {
    // A cloud keeps two queues per node: an idle node's must not cost descriptors.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let mut log = open(&dir, Fsync::Always);
    assert_eq!(open_segments(&dir), 0, "opened, nothing written");
    append_range(&mut log, 1, 11, 4);
    assert_eq!(open_segments(&dir), 1, "written to");
    drop(log);
    let mut log = open(&dir, Fsync::Always);
    assert_eq!(
        open_segments(&dir),
        0,
        "reopened with records, nothing written"
    );
    append_range(&mut log, 11, 13, 1);
    assert_records(&read_all(&log, 1), 1, 13);
    // Drained: once the queue starts an empty segment, the old one's descriptor goes.
    let big = vec![7u8; (log.segment_max / 4) as usize];
    assert_eq!(log.append(&[&big]).unwrap(), 13);
    log.ack(13).unwrap();
    assert_eq!(log.segments.len(), 1, "{:?}", log.segments);
    assert_eq!(log.segments[0].size, 0, "{:?}", log.segments);
    assert_eq!(open_segments(&dir), 0, "drained");
    assert_eq!(log.append(&[b"again"]).unwrap(), 14);
    assert_eq!(read_all(&log, 14), vec![(14, b"again".to_vec())]);
    assert_eq!(open_segments(&dir), 1, "written to again");
}
