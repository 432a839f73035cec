//! Throughput of the durable queue (`hub::store::Log`): appends of 256-byte records in batches of
//! 1, 64 and 1024 under `Fsync::Always` and `Fsync::Never`, then reads and recovery of a backlog.
//!
//! `cargo bench --bench store`; a few seconds in all. Runs in `STORE_BENCH_DIR` if set, else
//! under Cargo's target tmp dir (a real disk, unlike a tmpfs `/tmp`, so fsync costs what it costs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hub::store::{Fsync, Limits, Log};

const RECORD: usize = 256;
/// Time spent on each append configuration.
const BUDGET: Duration = Duration::from_millis(400);
/// The backlog the read and recovery figures use.
const BACKLOG: u64 = 400_000;

fn main() {
    let base = std::env::var_os("STORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("bench dir");
    println!("store bench in {}, {RECORD}-byte records", base.display());

    for fsync in [Fsync::Never, Fsync::Always] {
        for batch in [1usize, 64, 1024] {
            let dir = tempfile::tempdir_in(&base).expect("temp dir");
            let (records, secs) = append_for(&dir.path().join("q"), fsync, batch, BUDGET);
            let what = format!("append fsync={fsync} batch={batch}");
            report(&what, records, secs);
        }
    }

    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let path = dir.path().join("q");
    {
        let mut log = Log::open(&path, Limits::UNLIMITED, Fsync::Never).expect("open");
        let record = [0x42u8; RECORD];
        let batch: Vec<&[u8]> = vec![&record; 1024];
        while log.next_seq() <= BACKLOG {
            log.append(&batch).expect("append");
        }
        log.sync().expect("sync");
    }
    let start = Instant::now();
    let log = Log::open(&path, Limits::UNLIMITED, Fsync::Never).expect("reopen");
    let secs = start.elapsed().as_secs_f64();
    let backlog = log.len();
    report("open (recovery scan) of the backlog", backlog, secs);

    let mut reader = log.reader(1).expect("reader");
    let mut out = Vec::with_capacity(1024);
    let start = Instant::now();
    let mut read = 0u64;
    loop {
        out.clear();
        let n = reader.read(log.next_seq(), 1024, &mut out).expect("read");
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(read, backlog);
    report("read, up to 1024 per call", read, secs);
}

/// Appends `batch`-record batches for about `budget`; returns records appended and seconds taken.
/// Acknowledges everything whenever 64 MiB are on disk, so the run stays bounded.
fn append_for(dir: &std::path::Path, fsync: Fsync, batch: usize, budget: Duration) -> (u64, f64) {
    let mut log = Log::open(dir, Limits::UNLIMITED, fsync).expect("open");
    let record = [0x42u8; RECORD];
    let records: Vec<&[u8]> = vec![&record; batch];
    let start = Instant::now();
    let mut appended = 0u64;
    while start.elapsed() < budget {
        for _ in 0..16 {
            log.append(&records).expect("append");
            appended += batch as u64;
        }
        if log.bytes() > 64 << 20 {
            log.ack(log.next_seq() - 1).expect("ack");
        }
    }
    (appended, start.elapsed().as_secs_f64())
}

fn report(what: &str, records: u64, secs: f64) {
    let per_sec = records as f64 / secs;
    let mb = per_sec * RECORD as f64 / 1e6;
    println!("{what:<36} {per_sec:>10.0} records/s  {mb:>8.1} MB/s  ({records} in {secs:.2} s)");
}
