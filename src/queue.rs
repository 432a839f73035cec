//! A durable queue in use: the [`store::Log`](crate::store::Log) behind a group-commit task.
//!
//! Applications' messages arrive one at a time from many connections; the append task takes
//! everything waiting, writes it in one batch and (with `fsync: always`) one fsync, and only then
//! answers each publisher. Readers (the link) see a record once its batch is complete.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use smol::channel::{Receiver, Sender};

use crate::config::QueueConfig;
use crate::signal::Token;
use crate::store::{AppendError, Fsync, Limits, Log, Reader};

/// The most records written in one batch.
const MAX_BATCH: usize = 4096;

struct Append {
    records: Records,
    /// Whether the reply waits for the fsync policy (false: for requests and responses).
    durable: bool,
    reply: Answer,
}

/// The records of one submission: most publishers submit one, which then needs no list.
enum Records {
    One(Vec<u8>),
    Many(Vec<Vec<u8>>),
}

impl Records {
    fn as_slice(&self) -> &[Vec<u8>] {
        match self {
            Records::One(r) => std::slice::from_ref(r),
            Records::Many(rs) => rs,
        }
    }
}

/// The outcome of one submitted batch, handed from the append task to the publisher waiting
/// for it: one allocation and at most one wake-up per batch (a channel per append took several
/// of each).
#[derive(Default)]
struct Reply(Mutex<ReplyState>);

#[derive(Default)]
struct ReplyState {
    outcome: Option<Result<u64, String>>,
    waker: Option<Waker>,
}

impl Reply {
    fn state(&self) -> MutexGuard<'_, ReplyState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The append task's end of a [`Reply`]. Dropped without an answer (the queue is gone), it
/// answers that the queue is closed.
struct Answer(Arc<Reply>);

impl Answer {
    fn send(self, outcome: Result<u64, String>) {
        self.0.state().outcome = Some(outcome);
        // Dropping wakes the publisher.
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        let mut state = self.0.state();
        if state.outcome.is_none() {
            state.outcome = Some(Err("the queue is closed".into()));
        }
        let waker = state.waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A submission on its way through the append task ([`Queue::submit_one`]): finishes with the
/// first record's sequence number once durable, or why the records were refused.
pub struct Answered(Arc<Reply>);

impl Future for Answered {
    type Output = Result<u64, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.0.state();
        if let Some(outcome) = state.outcome.take() {
            return Poll::Ready(outcome);
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A queue's log, open or not: a queue with nothing in it (an idle node's) keeps only the few
/// figures it answers with, and opens its log again when a record is appended, read or
/// acknowledged.
enum Held {
    /// Nothing unacknowledged: `dir` and `limits` to open the log with, its acknowledged
    /// position and its bytes on disk.
    Closed {
        dir: Box<Path>,
        limits: Limits,
        acked: u64,
        bytes: u64,
    },
    Open(Box<Log>),
}

/// The open log of a [`Queue`], locked.
struct LogGuard<'a>(MutexGuard<'a, Held>);

impl std::ops::Deref for LogGuard<'_> {
    type Target = Log;

    fn deref(&self) -> &Log {
        match &*self.0 {
            Held::Open(log) => log,
            Held::Closed { .. } => unreachable!("a LogGuard holds an open log"),
        }
    }
}

impl std::ops::DerefMut for LogGuard<'_> {
    fn deref_mut(&mut self) -> &mut Log {
        match &mut *self.0 {
            Held::Open(log) => log,
            Held::Closed { .. } => unreachable!("a LogGuard holds an open log"),
        }
    }
}

/// A durable queue shared by its producers (applications) and its consumer (the link).
///
/// An empty queue lets go of its log once opened (its segment list, its paths and its files'
/// state; a cloud has two queues per node, most of them empty): it is opened again by the first
/// append, read or acknowledgement that needs it, and then kept.
pub struct Queue {
    log: Mutex<Held>,
    stream: u64,
    /// Records with a sequence number below this are complete and may be read.
    visible: AtomicU64,
    /// Holds one token when records were added since the consumer last looked.
    added: Token,
    /// The append task's queue, from the first [`submit_with`](Self::submit_with) on: a queue
    /// nothing is submitted to (an idle node's) has no task and no channel.
    appends: OnceLock<Sender<Append>>,
    /// This queue, for the append task it starts.
    me: Weak<Queue>,
    fsync: Fsync,
}

impl Queue {
    /// Opens (or creates) the queue in `dir` (and, with `fsync: periodic`, starts a task that
    /// syncs every second). Its append task starts with the first submission.
    pub fn open(dir: &Path, config: &QueueConfig) -> io::Result<Arc<Queue>> {
        let limits = Limits {
            max_messages: config.max_messages,
            max_bytes: config.max_bytes,
        };
        let log = Log::open(dir, limits, config.fsync)?;
        let (stream, next_seq) = (log.stream_id(), log.next_seq());
        // Reopening an empty log reads the same figures, its stream id included once that is
        // on disk.
        let held = if log.is_empty() && log.stream_saved() {
            Held::Closed {
                dir: dir.into(),
                limits,
                acked: log.acked(),
                bytes: log.bytes(),
            }
        } else {
            Held::Open(Box::new(log))
        };
        let queue = Arc::new_cyclic(|me| Queue {
            stream,
            visible: AtomicU64::new(next_seq),
            log: Mutex::new(held),
            added: Token::new(),
            appends: OnceLock::new(),
            me: me.clone(),
            fsync: config.fsync,
        });
        if config.fsync == Fsync::Periodic {
            let weak = Arc::downgrade(&queue);
            smol::spawn(async move {
                loop {
                    smol::Timer::after(Duration::from_secs(1)).await;
                    let Some(q) = weak.upgrade() else { return };
                    let sync = move || q.lock_open().map_or(Ok(()), |mut log| log.sync());
                    if let Err(e) = smol::unblock(sync).await {
                        log::error!("queue sync failed: {e}");
                    }
                }
            })
            .detach();
        }
        Ok(queue)
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log, opened if it was let go. Errors: the log's folder or files cannot be read.
    fn lock(&self) -> io::Result<LogGuard<'_>> {
        let mut held = self.held();
        if let Held::Closed { dir, limits, .. } = &*held {
            *held = Held::Open(Box::new(Log::open(dir, *limits, self.fsync)?));
        }
        Ok(LogGuard(held))
    }

    /// Whether the queue holds its log open (tests: an empty queue must not).
    #[cfg(test)]
    fn holds_log(&self) -> bool {
        matches!(*self.held(), Held::Open(_))
    }

    /// The log if it is open.
    fn lock_open(&self) -> Option<LogGuard<'_>> {
        let held = self.held();
        matches!(*held, Held::Open(_)).then(|| LogGuard(held))
    }

    /// Appends `records`; returns the first one's sequence number once they are durable (as the
    /// fsync policy defines it), or why they were refused (the queue is full, …). Nothing of a
    /// refused batch is kept.
    pub async fn append(&self, records: Vec<Vec<u8>>) -> Result<u64, String> {
        self.submit(records).await
    }

    /// Hands `records` to the append task without waiting; the returned future finishes with the
    /// outcome. Batches submitted one after another are appended in that order.
    pub fn submit(
        &self,
        records: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<u64, String>> + use<> {
        self.submit_with(records, true)
    }

    /// [`submit`](Self::submit), for records whose reply need not wait for an fsync when
    /// `durable` is false: requests and responses, which are of no use after a restart (their
    /// requester's connection ends with the hub). They still keep their place in the queue's
    /// order, so they never overtake what was submitted before them.
    pub fn submit_with(
        &self,
        records: Vec<Vec<u8>>,
        durable: bool,
    ) -> impl Future<Output = Result<u64, String>> + use<> {
        self.submit_records(Records::Many(records), durable)
    }

    /// [`submit_with`](Self::submit_with) for one record.
    pub fn submit_one(&self, record: Vec<u8>, durable: bool) -> Answered {
        self.submit_records(Records::One(record), durable)
    }

    fn submit_records(&self, records: Records, durable: bool) -> Answered {
        let reply = Arc::new(Reply::default());
        let appends = self.appends.get_or_init(|| {
            let (appends, requests) = smol::channel::unbounded();
            smol::spawn(append_task(self.me.clone(), requests)).detach();
            appends
        });
        // Refused (the append task is gone), the append is dropped and its `Answer` says so.
        let _ = appends.try_send(Append {
            records,
            durable,
            reply: Answer(reply.clone()),
        });
        Answered(reply)
    }

    /// Appends `record` now, from the caller's thread, without waiting for the fsync policy (see
    /// [`sync`](Self::sync)): once this returns, the record survives the end of the process
    /// (not a power cut). For deliveries to a durable session, which must be written before the
    /// link acknowledges them.
    ///
    /// Errors: the queue or the disk is full.
    pub fn append_now(&self, record: &[u8]) -> Result<u64, String> {
        let seq = {
            let mut log = self
                .lock()
                .map_err(|e| format!("cannot open the queue: {e}"))?;
            let seq = log.append_unsynced(&[record]).map_err(|e| e.to_string())?;
            self.visible.store(log.next_seq(), Ordering::Release);
            seq
        };
        self.added.notify();
        Ok(seq)
    }

    /// Syncs what [`append_now`](Self::append_now) wrote, as the fsync policy asks (nothing for
    /// `never`).
    pub fn sync(&self) -> io::Result<()> {
        match self.fsync {
            Fsync::Always => self.lock_open().map_or(Ok(()), |mut log| log.sync()),
            // `periodic`: the queue's own task syncs every second.
            Fsync::Periodic | Fsync::Never => Ok(()),
        }
    }

    /// The stream id the log was created with.
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// The first sequence number still held (acknowledged + 1).
    pub fn first(&self) -> u64 {
        match &*self.held() {
            Held::Open(log) => log.acked() + 1,
            Held::Closed { acked, .. } => acked + 1,
        }
    }

    /// Unacknowledged messages.
    pub fn len(&self) -> u64 {
        match &*self.held() {
            Held::Open(log) => log.len(),
            Held::Closed { .. } => 0,
        }
    }

    /// Bytes of the queue's segment files on disk (what `max-bytes` bounds; acknowledged
    /// records count until their segment is deleted).
    pub fn bytes(&self) -> u64 {
        match &*self.held() {
            Held::Open(log) => log.bytes(),
            Held::Closed { bytes, .. } => *bytes,
        }
    }

    /// Whether every message was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records below this sequence number may be read.
    pub fn visible(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    /// A reader from sequence number `from`.
    pub fn reader(&self, from: u64) -> io::Result<Reader> {
        self.lock()?.reader(from)
    }

    /// Everything up to `seq` was acknowledged by the peer: reclaim it. A peer that processed
    /// numbers beyond what this queue holds (its unsynced tail was lost in a power cut) moves the
    /// numbering past them, so new messages are not taken for repeats. A lost tail holds at most
    /// `max_messages` records (the queue never held more), so a claim beyond that is refused
    /// (`InvalidData`) and changes nothing.
    pub fn ack(&self, seq: u64) -> io::Result<()> {
        if let Held::Closed { acked, .. } = &*self.held() {
            if seq <= *acked {
                // What every link's start repeats: nothing to reclaim, no log to open.
                return Ok(());
            }
        }
        let mut log = self.lock()?;
        let issued = log.next_seq() - 1;
        let max_messages = log.limits().max_messages;
        if seq - issued.min(seq) > max_messages {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the peer claims to have processed up to {seq}, more than {max_messages} beyond the {issued} this queue issued; ignored"
                ),
            ));
        }
        if seq >= log.next_seq() {
            log::warn!(
                "the peer processed up to {seq}, beyond this queue's {}: continuing after it",
                log.next_seq() - 1
            );
            log.skip_to(seq + 1)?;
            self.visible.store(log.next_seq(), Ordering::Release);
        }
        log.ack(seq)
    }

    /// Finishes when records were added since the last call finished.
    pub async fn added(&self) {
        self.added.wait().await;
    }
}

async fn append_task(queue: Weak<Queue>, requests: Receiver<Append>) {
    while let Ok(first) = requests.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].records.as_slice().len();
        while count < MAX_BATCH {
            match requests.try_recv() {
                Ok(more) => {
                    count += more.records.as_slice().len();
                    batch.push(more);
                }
                Err(_) => break,
            }
        }
        let Some(q) = queue.upgrade() else { return };
        crate::metrics::METRICS.commit_batch.observe(count as u64);
        let (q, batch, results) = smol::unblock(move || {
            let results = match q.lock() {
                Ok(mut log) => write_batch(&mut log, &batch),
                Err(e) => {
                    let why = format!("cannot open the queue: {e}");
                    batch.iter().map(|_| Err(why.clone())).collect()
                }
            };
            (q, batch, results)
        })
        .await;
        if let Some(log) = q.lock_open() {
            q.visible.store(log.next_seq(), Ordering::Release);
        }
        q.added.notify();
        for (req, result) in batch.into_iter().zip(results) {
            req.reply.send(result);
        }
    }
}

/// Writes the whole batch at once; if that is refused (the queue or the disk is full), each
/// request on its own, so one publisher's large batch does not fail another's small one.
fn write_batch(log: &mut Log, batch: &[Append]) -> Vec<Result<u64, String>> {
    let all: Vec<&[u8]> = batch
        .iter()
        .flat_map(|a| a.records.as_slice().iter().map(Vec::as_slice))
        .collect();
    let durable = batch.iter().any(|a| a.durable);
    let append = |log: &mut Log, records: &[&[u8]], durable: bool| {
        if durable {
            log.append(records)
        } else {
            log.append_unsynced(records)
        }
    };
    match append(log, &all, durable) {
        Ok(mut seq) => batch
            .iter()
            .map(|a| {
                let first = seq;
                seq += a.records.as_slice().len() as u64;
                Ok(first)
            })
            .collect(),
        // The publishers' own batches may fit one by one where all of them together did not.
        Err(AppendError::Full { .. } | AppendError::NoSpace(_)) if batch.len() > 1 => batch
            .iter()
            .map(|a| {
                let refs: Vec<&[u8]> = a.records.as_slice().iter().map(Vec::as_slice).collect();
                append(log, &refs, a.durable).map_err(|e| e.to_string())
            })
            .collect(),
        Err(e) => batch.iter().map(|_| Err(e.to_string())).collect(),
    }
}

/// Takes the lock on the state folder `dir` (creating it), so two hubs never share queues; the
/// lock lasts as long as the returned file is open (the operating system drops it when the
/// process ends, however it ends).
pub fn lock_dir(dir: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| format!("{} is in use by another hub process", dir.display()))?;
    Ok(file)
}

/// Whether `dir` takes writes: a small file is created, written and removed. Errors: one
/// sentence naming the folder and what failed (read-only file system, disk full, permissions).
pub fn writable(dir: &Path) -> Result<(), String> {
    let probe = dir.join(".ready-probe");
    let result = std::fs::write(&probe, b"ready\n");
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| format!("{} does not take writes: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, max_messages: u64) -> QueueConfig {
        QueueConfig {
            dir: dir.to_owned(),
            max_messages,
            max_bytes: 1 << 30,
            fsync: Fsync::Always,
            window: 8,
        }
    }

    #[test]
    fn an_empty_queue_holds_no_log_until_it_is_used() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(tmp.path(), &config(tmp.path(), 100)).unwrap();
        assert!(!q.holds_log(), "a new, empty queue");
        let stream = q.stream();
        assert_eq!((q.first(), q.len(), q.visible()), (1, 0, 1));
        // Every link's start acknowledges what was acknowledged already: no log for that.
        q.ack(0).unwrap();
        assert!(!q.holds_log());
        smol::block_on(async {
            assert_eq!(q.append(vec![vec![1], vec![2]]).await.unwrap(), 1);
        });
        assert!(q.holds_log(), "opened by the append");
        assert_eq!(q.stream(), stream, "the stream id the queue announced");
        q.ack(2).unwrap();
        drop(q);

        // Reopened: empty again, so let go, with its figures (the acknowledged position and the
        // bytes of the segment still on disk) and its stream id kept.
        let q = Queue::open(tmp.path(), &config(tmp.path(), 100)).unwrap();
        assert!(!q.holds_log());
        assert_eq!(q.stream(), stream);
        assert_eq!((q.first(), q.len(), q.visible()), (3, 0, 3));
        let bytes = q.bytes();
        assert!(bytes > 0, "the drained segment is still on disk");
        // A peer claiming more than the queue issued is refused as before, the log opened for it.
        assert!(q.ack(1000).is_err());
        let q = Queue::open(tmp.path(), &config(tmp.path(), 100)).unwrap();
        smol::block_on(async {
            assert_eq!(
                q.append(vec![vec![3]]).await.unwrap(),
                3,
                "numbering goes on"
            );
        });
        let mut got = Vec::new();
        q.reader(3)
            .unwrap()
            .read(q.visible(), 10, &mut got)
            .unwrap();
        assert_eq!(got, vec![(3, vec![3])]);
        drop(q);

        // A queue with messages in it keeps its log from the start.
        let q = Queue::open(tmp.path(), &config(tmp.path(), 100)).unwrap();
        assert!(q.holds_log());
        assert_eq!((q.first(), q.len()), (3, 1));
    }

    #[test]
    fn group_commit_order_and_full() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(tmp.path(), &config(tmp.path(), 5)).unwrap();
        smol::block_on(async {
            // Submitted one after another without waiting: appended in that order.
            let pending: Vec<_> = (0..4u8).map(|i| q.submit(vec![vec![i]])).collect();
            let mut seqs = Vec::new();
            for p in pending {
                seqs.push(p.await.unwrap());
            }
            assert_eq!(seqs, vec![1, 2, 3, 4]);
            assert_eq!(q.visible(), 5);
            // Two more do not fit in five: refused whole, nothing kept.
            let err = q.append(vec![vec![9], vec![9]]).await.unwrap_err();
            assert!(err.contains("full"), "{err}");
            assert_eq!(q.len(), 4);
            let mut r = q.reader(1).unwrap();
            let mut got = Vec::new();
            r.read(q.visible(), 10, &mut got).unwrap();
            assert_eq!(
                got.iter().map(|(s, p)| (*s, p[0])).collect::<Vec<_>>(),
                vec![(1, 0), (2, 1), (3, 2), (4, 3)]
            );
        });
    }

    #[test]
    fn unsynced_records_keep_their_place_in_the_order() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(tmp.path(), &config(tmp.path(), 100)).unwrap();
        smol::block_on(async {
            let pending: Vec<_> = (0..6u8)
                .map(|i| q.submit_with(vec![vec![i]], i % 2 == 0))
                .collect();
            let mut seqs = Vec::new();
            for p in pending {
                seqs.push(p.await.unwrap());
            }
            assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
            assert_eq!(q.visible(), 7);
        });
        drop(q);
        // What was written unsynced is in the files all the same: a reopened queue has it.
        let q = Queue::open(tmp.path(), &config(tmp.path(), 100)).unwrap();
        let mut got = Vec::new();
        q.reader(1)
            .unwrap()
            .read(q.visible(), 10, &mut got)
            .unwrap();
        let bytes: Vec<u8> = got.iter().map(|(_, p)| p[0]).collect();
        assert_eq!(bytes, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_peer_ahead_of_the_queue_moves_its_numbering_on() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(tmp.path(), &config(tmp.path(), 100)).unwrap();
        smol::block_on(async {
            assert_eq!(q.append(vec![vec![1], vec![2]]).await.unwrap(), 1);
            // The peer says it processed up to 7 (this queue lost its tail in a power cut).
            q.ack(7).unwrap();
            assert_eq!(
                q.append(vec![vec![3]]).await.unwrap(),
                8,
                "no number the peer has seen is reused"
            );
            assert_eq!((q.first(), q.len()), (8, 1));
        });
    }

    #[test]
    fn a_peer_cannot_move_the_numbering_beyond_what_could_have_been_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(tmp.path(), &config(tmp.path(), 100)).unwrap();
        smol::block_on(q.append(vec![vec![1]])).unwrap();
        for claim in [102, u64::MAX] {
            let err = q.ack(claim).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        }
        assert_eq!(q.first(), 1, "nothing acknowledged");
        // 100 past the one issued could have been lost with the tail: taken.
        q.ack(101).unwrap();
        assert_eq!(
            smol::block_on(q.append(vec![vec![2]])).unwrap(),
            102,
            "numbering goes on after the claim"
        );
    }

    #[test]
    fn an_append_the_queue_drops_unanswered_is_refused() {
        let reply = Arc::new(Reply::default());
        let answered = Answered(reply.clone());
        drop(Answer(reply));
        let outcome = smol::block_on(answered);
        assert_eq!(outcome, Err("the queue is closed".to_owned()));
        // Answered before the publisher looks, or while it waits: the outcome either way.
        let reply = Arc::new(Reply::default());
        Answer(reply.clone()).send(Ok(7));
        assert_eq!(smol::block_on(Answered(reply)), Ok(7));
        let reply = Arc::new(Reply::default());
        let answer = Answer(reply.clone());
        let waiting = smol::spawn(Answered(reply));
        std::thread::spawn(move || answer.send(Ok(9)));
        assert_eq!(smol::block_on(waiting), Ok(9));
    }

    #[test]
    fn a_state_folder_is_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let _held = lock_dir(tmp.path()).unwrap();
        let again = lock_dir(tmp.path()).unwrap_err();
        assert!(again.contains("in use by another hub process"), "{again}");
    }
}
