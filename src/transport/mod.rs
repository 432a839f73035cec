//! The link abstraction both sides use, whatever carries it.
//!
//! A [`Link`] is an open WebSocket or QUIC connection split into a reader task and a writer task.
//! The task that owns the [`Session`](crate::proto::Session) only sends frames into the link and
//! receives [`Inbound`] items from it, so it never blocks on a socket: a stalled write is noticed
//! by the writer task (the write deadline) and reported as an inbound close.
//!
//! Each link keeps its [`Live`] figures (round trip, messages unacknowledged) where listings
//! read them, and samples the transport's round trip once per heartbeat interval
//! ([`Link::tick`]): QUIC's own estimate, or over WebSocket the time from a Ping to its Pong.

pub mod dial;
pub mod quic;
pub mod ws;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use smol::future::FutureExt;

use crate::signal::{Latch, PipeReceiver, PipeSender, RaiseOnDrop, Token, pipe};

use crate::config::Protocol;
use crate::metrics::{Cause, METRICS};
use crate::proto::frame::{CompactFrame, LANES, Lane};
use crate::proto::session::frame_lane;
use crate::proto::{CloseCode, Frame, FrameError, Session};

/// Why a link ended, as seen from this side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The peer closed the link with a hub close code.
    Closed(CloseCode),
    /// The peer closed the link with a code that is not a hub code, or none.
    ClosedOther(String),
    /// The byte stream ended without a close.
    Eof,
    /// A received frame could not be decoded (or was over the size limit).
    Frame(FrameError),
    /// A write stayed blocked past the write deadline.
    WriteTimeout(Duration),
    /// The peer refused this side's certificate: a TLS alert about it (see
    /// [`crate::tls::certificate_alert`]) or an HTTP refusal for it; the text says where and why.
    CertificateRefused(String),
    /// The peer answered the connection request with a refusal, not about this side's
    /// certificate (an HTTP status other than 101 before the WebSocket upgrade, or an HTTP
    /// response from placement that is not a usable 200); the text says which and why.
    Refused(String),
    /// The connection failed.
    Io(String),
    /// Nothing came back: no attempt got any answer (every address silent until the handshake
    /// timeout, the transport's own handshake timeout, or the most attempts allowed); the text
    /// names each address.
    NoAnswer(String),
}

impl LinkError {
    /// Whether this is the peer's own answer to a connection attempt, which trying another
    /// address of the same host would not change: [`LinkError::CertificateRefused`] and
    /// [`LinkError::Refused`]. This side's TLS sends its certificate, and then its HTTP request,
    /// only after the server proved it holds a certificate this side trusts, so these answers
    /// come from the cloud (or placement service) itself, not from whatever else listens on one
    /// of its addresses. Everything else (a refused or reset TCP connection, a TLS handshake cut
    /// short or with a server this side does not trust, silence) says nothing about the service,
    /// and the next address is tried ([`dial::race`]).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            LinkError::CertificateRefused(_) | LinkError::Refused(_)
        )
    }

    /// What a failed connection attempt says, for [`dial::race`]: [`dial::Verdict::Final`] as
    /// [`LinkError::is_final`], [`dial::Verdict::Silence`] for [`LinkError::NoAnswer`] (nothing
    /// came back), [`dial::Verdict::Answer`] for the rest (something answered: a refused or
    /// reset connection, a TLS failure, a close).
    pub fn verdict(&self) -> dial::Verdict {
        if self.is_final() {
            dial::Verdict::Final
        } else if matches!(self, LinkError::NoAnswer(_)) {
            dial::Verdict::Silence
        } else {
            dial::Verdict::Answer
        }
    }

    /// A failed [`dial::race`] as one error naming every address tried: of the kind of the final
    /// answer that ended it, if one did; [`LinkError::NoAnswer`] when nothing answered at all;
    /// else [`LinkError::Io`].
    pub fn from_race(failed: dial::Failed<LinkError>) -> LinkError {
        let why = failed.to_string();
        match failed.final_error() {
            Some(LinkError::CertificateRefused(_)) => LinkError::CertificateRefused(why),
            Some(LinkError::Refused(_)) => LinkError::Refused(why),
            _ if failed.silent => LinkError::NoAnswer(why),
            _ => LinkError::Io(why),
        }
    }
}

impl LinkError {
    /// Why a link that ended with this error ended, as a [`Cause`]: a close by the peer is
    /// [`Cause::Closed`] ([`Cause::Replaced`] for code 2, [`Cause::CertificateRefused`] for code
    /// 4 or a refused certificate), a lost connection [`Cause::ConnectionLost`], a bad frame
    /// [`Cause::ProtocolError`], a blocked write [`Cause::WriteDeadline`], a refusal or silence
    /// while connecting [`Cause::ConnectFailed`].
    pub fn cause(&self) -> Cause {
        match self {
            LinkError::Closed(CloseCode::Replaced) => Cause::Replaced,
            LinkError::Closed(CloseCode::IdentityMismatch) | LinkError::CertificateRefused(_) => {
                Cause::CertificateRefused
            }
            LinkError::Closed(_) | LinkError::ClosedOther(_) => Cause::Closed,
            LinkError::Eof | LinkError::Io(_) => Cause::ConnectionLost,
            LinkError::Frame(_) => Cause::ProtocolError,
            LinkError::WriteTimeout(_) => Cause::WriteDeadline,
            LinkError::Refused(_) | LinkError::NoAnswer(_) => Cause::ConnectFailed,
        }
    }
}

/// Why a link ended that this side's own session closed with `code`
/// ([`Event::Close`](crate::proto::Event::Close)): [`Cause::ReadDeadline`] for a deadline that passed,
/// [`Cause::WriteDeadline`] for blocked writes, [`Cause::Replaced`] for a newer connection,
/// [`Cause::ProtocolError`] for what the peer sent; `None` for code 1, this side stopping.
pub fn close_cause(code: CloseCode) -> Option<Cause> {
    Some(match code {
        CloseCode::ShuttingDown => return None,
        CloseCode::Replaced => Cause::Replaced,
        CloseCode::Timeout => Cause::ReadDeadline,
        CloseCode::WriteTimeout => Cause::WriteDeadline,
        CloseCode::IdentityMismatch => Cause::CertificateRefused,
        CloseCode::ProtocolError | CloseCode::Oversized | CloseCode::UnsupportedVersion => {
            Cause::ProtocolError
        }
        CloseCode::NodeLimit | CloseCode::Unavailable => Cause::Closed,
    })
}

/// Live figures of one link, shared with whoever lists it (`hub nodes`, `hub status`): the link's
/// task and transport store them (relaxed atomics), readers take them at any time.
#[derive(Debug, Default)]
pub struct Live {
    /// The last round-trip sample, in nanoseconds; 0 before the first.
    rtt_ns: AtomicU64,
    /// Messages sent on the link and not yet acknowledged by the peer, both lanes.
    sent_unacked: AtomicU64,
    /// Messages received from the peer and not yet acknowledged to it, both lanes.
    received_unacked: AtomicU64,
}

impl Live {
    /// Records a round-trip sample: kept as the last, and observed in `hub_link_rtt_seconds`.
    pub fn record_rtt(&self, rtt: Duration) {
        let ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.rtt_ns.store(ns, Ordering::Relaxed);
        METRICS.link_rtt.observe_duration(rtt);
    }

    /// The last round-trip sample, if one was taken.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Sets the messages unacknowledged each way (see [`Session::unacknowledged`]).
    pub fn set_unacknowledged(&self, (sent, received): (u64, u64)) {
        self.sent_unacked.store(sent, Ordering::Relaxed);
        self.received_unacked.store(received, Ordering::Relaxed);
    }

    /// Messages sent and not yet acknowledged by the peer, both lanes.
    pub fn in_flight(&self) -> u64 {
        self.sent_unacked.load(Ordering::Relaxed)
    }

    /// Messages received and not yet acknowledged to the peer, both lanes.
    pub fn received_unacknowledged(&self) -> u64 {
        self.received_unacked.load(Ordering::Relaxed)
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Closed(code) => write!(f, "closed by the peer: {code}"),
            LinkError::ClosedOther(why) => write!(f, "closed by the peer: {why}"),
            LinkError::Eof => f.write_str("connection ended"),
            LinkError::Frame(e) => write!(f, "bad frame from the peer: {e}"),
            LinkError::WriteTimeout(d) => write!(f, "write blocked for {:.1}s", d.as_secs_f64()),
            LinkError::CertificateRefused(why)
            | LinkError::Refused(why)
            | LinkError::Io(why)
            | LinkError::NoAnswer(why) => f.write_str(why),
        }
    }
}

impl From<LinkError> for String {
    fn from(e: LinkError) -> String {
        e.to_string()
    }
}

/// A TLS or socket error as a [`LinkError`]: [`LinkError::CertificateRefused`] when it is an
/// alert from the peer about this side's certificate (see [`crate::tls::certificate_alert`]),
/// else [`LinkError::Io`] with `context` and the error.
pub fn io_link_error(context: &str, e: &std::io::Error) -> LinkError {
    let refused = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(crate::tls::certificate_alert)
        .is_some();
    let why = format!("{context}: {e}");
    if refused {
        LinkError::CertificateRefused(why)
    } else {
        LinkError::Io(why)
    }
}

/// What the reader and writer tasks report.
#[derive(Debug)]
pub enum Inbound {
    /// One frame's bytes.
    Frame(Vec<u8>),
    /// The link is gone.
    Closed(LinkError),
}

/// What the session's task asks a writer task to do.
#[derive(Debug)]
enum Outbound {
    Frame(CompactFrame),
    Close(CloseCode),
    /// WebSocket: send a Ping stamped with the time, whose Pong gives a round-trip sample.
    Ping,
}

/// An open link: frames in, frames out, on two lanes ([`Lane`]).
///
/// Each lane has its own inbound queue, and [`Link::recv`] takes urgent items first, so that a
/// backlog of bulk messages the session has not processed yet never holds up a request, an
/// acknowledgement or a heartbeat. Outbound, each lane has its own queue too: the writer takes
/// urgent frames before bulk ones (WebSocket), or each lane has its own QUIC stream and writer.
/// The session's task asks [`Link::room`] before it takes more messages of a lane from its queue,
/// so what waits here for the socket stays within [`LANE_BYTES`] per lane; the rest of the window
/// waits in the durable queue, not in memory.
pub struct Link {
    /// The transport.
    pub protocol: Protocol,
    /// The peer's address.
    pub peer: SocketAddr,
    inbound: [PipeReceiver<Inbound>; LANES],
    budget: [Arc<InboundBudget>; LANES],
    outbound: [PipeSender<Outbound>; LANES],
    queued: Arc<Queued>,
    writer_done: Arc<Token>,
    /// Dropped with the link, which stops the reader task.
    _alive: RaiseOnDrop,
    live: Arc<Live>,
    /// QUIC: the connection, whose round-trip estimate is sampled.
    quic: Option<quinn::Connection>,
    /// When the round trip is sampled next; `None` until the session is open.
    next_rtt: Option<Instant>,
    /// The link's end, taken from the inbound queue by [`Link::handle_waiting`] and kept for
    /// the next [`Link::recv`].
    held: std::sync::Mutex<Option<Inbound>>,
}

/// Frames [`Link::handle_waiting`] hands the session in one turn at most.
const RECV_BATCH: usize = 64;

/// Inbound frames buffered between a reader task and the session task, per lane, beyond which
/// the reader waits (as for [`INBOUND_BYTES`]). The queue is allocated as frames arrive, not up
/// front: an idle link holds none.
const INBOUND_QUEUE: usize = 64;
/// Bytes of frames read from the peer on one lane and not yet taken by the session, beyond which
/// the reader of that lane stops reading: the rest waits in the peer's socket or QUIC flow
/// control, not in this process. With the frame the reader holds while it waits, a link buffers
/// at most this plus one frame (16 MiB) per lane, not [`INBOUND_QUEUE`] frames of 16 MiB each.
pub const INBOUND_BYTES: usize = 4 << 20;
/// Bytes of frames of one lane the session's task hands a link ahead of its writer (see
/// [`Link::room`]): enough to keep the socket busy between two turns of the session's task, and
/// no more, so the window's worth of messages in flight is not also held here.
pub const LANE_BYTES: usize = 1 << 20;

/// The shortest time between two round-trip samples of a link ([`Link::tick`]): often enough
/// for `hub nodes` and the round-trip histogram, rare enough that 10,000 idle WebSocket nodes
/// cost the cloud some 330 Pings and as many Pongs a second.
pub const RTT_SAMPLE_INTERVAL: Duration = Duration::from_secs(30);

/// The frames and bytes waiting in a link's inbound queue, and a wake-up for a reader waiting
/// for room.
#[derive(Default)]
struct InboundBudget {
    queued: AtomicUsize,
    frames: AtomicUsize,
    room: Token,
}

impl InboundBudget {
    fn new() -> Arc<InboundBudget> {
        Arc::default()
    }

    /// Waits until fewer than [`INBOUND_BYTES`] and [`INBOUND_QUEUE`] frames are queued, then
    /// counts one frame of `len` bytes more.
    async fn reserve(&self, len: usize) {
        while self.queued.load(Ordering::Acquire) >= INBOUND_BYTES
            || self.frames.load(Ordering::Acquire) >= INBOUND_QUEUE
        {
            self.room.wait().await;
        }
        self.frames.fetch_add(1, Ordering::AcqRel);
        self.queued.fetch_add(len, Ordering::AcqRel);
    }

    /// A frame of `len` bytes was taken by the session.
    fn release(&self, len: usize) {
        self.frames.fetch_sub(1, Ordering::AcqRel);
        self.queued.fetch_sub(len, Ordering::AcqRel);
        self.room.notify();
    }
}

/// The bytes of outbound frames handed to a link and not yet taken by its writer, per lane, and
/// a wake-up for the session's task when a lane has room again.
struct Queued {
    bytes: [AtomicUsize; LANES],
    drained: Token,
}

impl Queued {
    fn add(&self, lane: Lane, len: usize) {
        self.bytes[lane.index()].fetch_add(len, Ordering::AcqRel);
    }

    /// The writer took `len` bytes of `lane`.
    fn taken(&self, lane: Lane, len: usize) {
        let before = self.bytes[lane.index()].fetch_sub(len, Ordering::AcqRel);
        if before >= LANE_BYTES / 2 && before - len < LANE_BYTES / 2 {
            self.drained.notify();
        }
    }
}

/// The payload bytes of a frame, as counted against [`LANE_BYTES`].
fn frame_bytes(f: &Outbound) -> usize {
    match f {
        Outbound::Frame(
            CompactFrame::Message { payload, .. } | CompactFrame::Part { payload, .. },
        ) => payload.len(),
        _ => 0,
    }
}

impl Link {
    /// Creates the channels of a link; the transport spawns its reader and writer tasks on the
    /// returned [`LinkTasks`].
    fn new(protocol: Protocol, peer: SocketAddr) -> (Link, LinkTasks) {
        // Unbounded: the readers keep to their budget ([`InboundBudget`]).
        let (in_urgent, out_urgent_rx) = pipe();
        let (in_bulk, out_bulk_rx) = pipe();
        let budget = [InboundBudget::new(), InboundBudget::new()];
        // Unbounded: the session bounds what it queues ([`Link::room`], its window, heartbeats).
        let (urgent_tx, urgent_rx) = pipe();
        let (bulk_tx, bulk_rx) = pipe();
        let queued = Arc::new(Queued {
            bytes: Default::default(),
            drained: Token::new(),
        });
        let done = Arc::new(Token::new());
        let alive = Arc::new(Latch::new());
        let live = Arc::new(Live::default());
        (
            Link {
                protocol,
                peer,
                inbound: [out_urgent_rx, out_bulk_rx],
                budget: budget.clone(),
                outbound: [urgent_tx, bulk_tx],
                queued: queued.clone(),
                writer_done: done.clone(),
                _alive: RaiseOnDrop(alive.clone()),
                live: live.clone(),
                quic: None,
                next_rtt: None,
                held: std::sync::Mutex::new(None),
            },
            LinkTasks {
                inbound: [in_urgent, in_bulk],
                budget,
                outbound: [urgent_rx, bulk_rx],
                queued,
                writer_done: done,
                alive,
                live,
            },
        )
    }

    /// This link's live figures.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Samples the transport's round trip when it is due: once `session` is open, at once and
    /// then every [`RTT_SAMPLE_INTERVAL`] or heartbeat interval of it, whichever is longer. QUIC: quinn's smoothed estimate, recorded at once.
    /// WebSocket: a Ping carrying the time it was written; the peer's WebSocket answers it with
    /// a Pong by itself (RFC 6455 section 5.5.2), which records the sample when it arrives.
    /// Call it each turn of the session's loop; [`Link::wait`] wakes up for it.
    pub fn tick(&mut self, session: &Session, now: Instant) {
        let Some(every) = session.heartbeat_interval().filter(|_| session.is_open()) else {
            return;
        };
        if self.next_rtt.is_some_and(|at| now < at) {
            return;
        }
        self.next_rtt = Some(now + every.max(RTT_SAMPLE_INTERVAL));
        match &self.quic {
            Some(conn) => self.live.record_rtt(conn.rtt()),
            None => {
                let _ = self.outbound[Lane::Urgent.index()].send(Outbound::Ping);
            }
        }
    }

    /// Queues a frame for the writer of its lane.
    pub fn send(&self, frame: Frame) {
        let lane = frame_lane(&frame);
        let out = Outbound::Frame(frame.into());
        self.queued.add(lane, frame_bytes(&out));
        let _ = self.outbound[lane.index()].send(out);
    }

    /// How many more bytes of messages the link takes on `lane` now (see [`LANE_BYTES`]).
    pub fn room(&self, lane: Lane) -> usize {
        LANE_BYTES.saturating_sub(self.queued.bytes[lane.index()].load(Ordering::Acquire))
    }

    /// The next item from the peer, urgent ones first; `Closed` once the link is gone.
    pub async fn recv(&self) -> Inbound {
        if let Some(end) = self.held.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return end;
        }
        if let Some(item) = self.try_next() {
            return item;
        }
        let [urgent, bulk] = &self.inbound;
        let (lane, item) = async { (Lane::Urgent, urgent.recv().await) }
            .or(async { (Lane::Bulk, bulk.recv().await) })
            .await;
        let item = item.unwrap_or(Inbound::Closed(LinkError::Eof));
        self.taken(lane, &item);
        item
    }

    /// The next item already waiting, urgent ones first, if there is one.
    fn try_next(&self) -> Option<Inbound> {
        let [urgent, bulk] = &self.inbound;
        let (lane, item) = match urgent.try_recv() {
            Ok(item) => (Lane::Urgent, item),
            Err(_) => (Lane::Bulk, bulk.try_recv().ok()?),
        };
        self.taken(lane, &item);
        Some(item)
    }

    /// Gives a frame taken from `lane`'s queue back to the reader's budget.
    fn taken(&self, lane: Lane, item: &Inbound) {
        if let Inbound::Frame(bytes) = item {
            self.budget[lane.index()].release(bytes.len());
        }
    }

    /// Hands `session` the frames already waiting from the peer (urgent ones first, at most
    /// [`RECV_BATCH`]), after the caller handled the one [`wait`](Self::wait) returned: a burst
    /// of frames takes one turn of the caller's loop (one fill, one flush, one wait), not one
    /// each. The link's end, if it comes among them, is kept for the next
    /// [`recv`](Self::recv) or [`wait`](Self::wait).
    pub fn handle_waiting(&self, session: &mut Session) {
        for _ in 0..RECV_BATCH {
            match self.try_next() {
                None => return,
                Some(Inbound::Frame(bytes)) => session.handle_owned(Instant::now(), bytes),
                Some(end) => {
                    *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(end);
                    return;
                }
            }
        }
    }

    /// Sends everything `session` has queued.
    pub fn flush(&self, session: &mut Session, now: Instant) {
        while let Some(f) = session.poll_transmit(now) {
            self.send(f);
        }
    }

    /// Closes the link with `code` after the urgent frames already queued, waiting at most
    /// `linger` for the writer to finish so the peer learns why.
    pub async fn close(self, code: CloseCode, linger: Duration) {
        let _ = self.outbound[Lane::Urgent.index()].send(Outbound::Close(code));
        let _ = self
            .writer_done
            .wait()
            .or(async {
                smol::Timer::after(linger).await;
            })
            .await;
    }

    /// Waits for whichever comes first: an inbound item, the session's next timer, room again
    /// on a lane the session filled, or `other` (the caller's stop signal, new messages to send,
    /// …). The timer is the one `session` has now: call it again after handling anything.
    ///
    /// Not an `async fn`: that would keep `other` twice (once as its argument, once inside the
    /// race) in the task of every idle node; this is the race alone.
    pub fn wait<'a, S: Future<Output = Wake> + 'a>(
        &'a self,
        session: &Session,
        other: S,
    ) -> impl Future<Output = Wake> + 'a {
        let due = match (session.poll_timeout(), self.next_rtt) {
            (Some(at), Some(rtt)) => Some(at.min(rtt)),
            (at, None) => at,
            (None, _) => None,
        };
        let timer = async move {
            match due {
                Some(at) => smol::Timer::at(at).await,
                None => smol::Timer::never().await,
            };
            Wake::Timer
        };
        let inbound = async { Wake::Inbound(self.recv().await) };
        let drained = async {
            self.queued.drained.wait().await;
            Wake::Added
        };
        inbound.or(other).or(drained).or(timer)
    }
}

/// Why [`Link::wait`] returned.
#[derive(Debug)]
pub enum Wake {
    /// Something arrived from the peer (or the link broke).
    Inbound(Inbound),
    /// The session's timer is due, or the next round-trip sample ([`Link::tick`]); calling
    /// [`Session::handle_timeout`] early does no harm.
    Timer,
    /// The caller wants the link closed with this code.
    Stop(CloseCode),
    /// There are new messages to send, or room to send them.
    Added,
}

/// The task ends of a link's channels.
struct LinkTasks {
    inbound: [PipeSender<Inbound>; LANES],
    budget: [Arc<InboundBudget>; LANES],
    outbound: [PipeReceiver<Outbound>; LANES],
    queued: Arc<Queued>,
    /// Notified when the writer is done.
    writer_done: Arc<Token>,
    /// Raised when the [`Link`] is dropped.
    alive: Arc<Latch>,
    live: Arc<Live>,
}

impl LinkTasks {
    /// Runs `read` (a transport's read loop) until it ends or the link is dropped.
    fn spawn_reader(&self, read: impl Future<Output = ()> + Send + 'static) {
        spawn_while(self.alive.clone(), read);
    }

    /// The writer's end of the outbound queues.
    fn outgoing(&self) -> Outgoing {
        Outgoing {
            lanes: self.outbound.clone(),
            queued: self.queued.clone(),
        }
    }

    /// A reader task's end of the inbound queues.
    fn reader(&self) -> Reader {
        Reader {
            inbound: self.inbound.clone(),
            budget: self.budget.clone(),
            closes_on: Lane::Urgent,
        }
    }
}

/// Runs `task` until it ends or `alive` is raised (the [`Link`] was dropped), so that no task of
/// a link outlives it waiting on a budget or a stream.
fn spawn_while(alive: Arc<Latch>, task: impl Future<Output = ()> + Send + 'static) {
    smol::spawn(task.or(async move { alive.wait().await })).detach();
}

/// A reader task's end of the inbound queues (also used by writers to report a failure).
#[derive(Clone)]
struct Reader {
    inbound: [PipeSender<Inbound>; LANES],
    budget: [Arc<InboundBudget>; LANES],
    /// The queue a close goes on: urgent (the session learns at once) unless the reader reads
    /// bulk frames too, whose close comes after the bulk frames it read before it, so that they
    /// are processed rather than sent again on the next link.
    closes_on: Lane,
}

impl Reader {
    /// This reader, its close queued behind the bulk frames it delivered.
    fn closing_after_bulk(mut self) -> Reader {
        self.closes_on = Lane::Bulk;
        self
    }

    /// Hands an item to the session task on the lane the frame belongs to (a close on
    /// `closes_on`),
    /// first waiting while [`INBOUND_BYTES`] are queued on it already; `false` when the reader
    /// should stop (the link closed, or its owner is gone).
    async fn deliver(&self, item: Inbound) -> bool {
        let last = matches!(item, Inbound::Closed(_));
        let lane = match &item {
            Inbound::Frame(bytes) => wire_lane(bytes),
            Inbound::Closed(_) => self.closes_on,
        };
        if let Inbound::Frame(bytes) = &item {
            self.budget[lane.index()].reserve(bytes.len()).await;
        }
        self.inbound[lane.index()].send(item).is_ok() && !last
    }
}

/// A writer's end of the outbound queues: urgent frames before bulk ones.
struct Outgoing {
    lanes: [PipeReceiver<Outbound>; LANES],
    queued: Arc<Queued>,
}

impl Outgoing {
    fn took(&self, lane: Lane, out: Outbound) -> Outbound {
        self.queued.taken(lane, frame_bytes(&out));
        out
    }

    /// The next item of `lane`, waiting for one; `None` once the link is dropped.
    async fn next_of(&self, lane: Lane) -> Option<Outbound> {
        let out = self.lanes[lane.index()].recv().await?;
        Some(self.took(lane, out))
    }

    /// The next item of `lane` if one is waiting.
    fn try_next_of(&self, lane: Lane) -> Option<Outbound> {
        let out = self.lanes[lane.index()].try_recv().ok()?;
        Some(self.took(lane, out))
    }

    /// The next item of either lane if one is waiting, urgent first.
    fn try_next(&self) -> Option<Outbound> {
        Lane::ALL
            .into_iter()
            .find_map(|lane| self.try_next_of(lane))
    }

    /// The next item of either lane, urgent first, waiting for one; `None` once the link is
    /// dropped.
    async fn next(&self) -> Option<Outbound> {
        if let Some(out) = self.try_next() {
            return Some(out);
        }
        let [urgent, bulk] = &self.lanes;
        let (lane, out) = async { (Lane::Urgent, urgent.recv().await) }
            .or(async { (Lane::Bulk, bulk.recv().await) })
            .await;
        match out {
            Some(out) => Some(self.took(lane, out)),
            // One lane's sender is gone: so is the link; the other may still hold a close.
            None => self.try_next(),
        }
    }
}

/// The lane of a frame's bytes: a MESSAGE or PART of the bulk lane goes to the bulk queue,
/// everything else (malformed frames included, which the session refuses) to the urgent one.
fn wire_lane(bytes: &[u8]) -> Lane {
    match bytes {
        [kind, lane, ..]
            if Frame::is_message_kind(*kind) && Lane::from_index(*lane) == Some(Lane::Bulk) =>
        {
            Lane::Bulk
        }
        _ => Lane::Urgent,
    }
}

/// Runs `fut` for at most `limit`; `None` when time ran out.
pub async fn timeout<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    async { Some(fut.await) }
        .or(async {
            smol::Timer::after(limit).await;
            None
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_end_of_a_link_has_its_cause() {
        let io = || LinkError::Io("reset".into());
        let cases = [
            (LinkError::Closed(CloseCode::ShuttingDown), Cause::Closed),
            (LinkError::Closed(CloseCode::NodeLimit), Cause::Closed),
            (LinkError::ClosedOther("1000".into()), Cause::Closed),
            (LinkError::Closed(CloseCode::Replaced), Cause::Replaced),
            (
                LinkError::Closed(CloseCode::IdentityMismatch),
                Cause::CertificateRefused,
            ),
            (
                LinkError::CertificateRefused("alert".into()),
                Cause::CertificateRefused,
            ),
            (LinkError::Eof, Cause::ConnectionLost),
            (io(), Cause::ConnectionLost),
            (
                LinkError::Frame(FrameError::Oversized(1)),
                Cause::ProtocolError,
            ),
            (
                LinkError::WriteTimeout(Duration::from_secs(1)),
                Cause::WriteDeadline,
            ),
            (LinkError::Refused("503".into()), Cause::ConnectFailed),
            (LinkError::NoAnswer("silence".into()), Cause::ConnectFailed),
        ];
        for (e, cause) in cases {
            assert_eq!(e.cause(), cause, "{e:?}");
        }
        assert_eq!(
            close_cause(CloseCode::ShuttingDown),
            None,
            "this side stops"
        );
        assert_eq!(close_cause(CloseCode::Timeout), Some(Cause::ReadDeadline));
        assert_eq!(
            close_cause(CloseCode::WriteTimeout),
            Some(Cause::WriteDeadline)
        );
        assert_eq!(close_cause(CloseCode::Replaced), Some(Cause::Replaced));
        for code in [
            CloseCode::ProtocolError,
            CloseCode::Oversized,
            CloseCode::UnsupportedVersion,
        ] {
            assert_eq!(close_cause(code), Some(Cause::ProtocolError), "{code:?}");
        }
        // Every label is snake_case, and each names one cause.
        let labels: Vec<&str> = Cause::ALL.iter().map(|c| c.label()).collect();
        for l in &labels {
            assert!(
                l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{l}"
            );
        }
        let mut unique = labels.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), labels.len());
        for (i, c) in Cause::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "ALL is in declaration order: {c:?}");
        }
    }

    #[test]
    fn an_outbound_slot_is_small() {
        // A link's outbound queue keeps its slots while idle: HELLO and WELCOME (160 bytes) are
        // boxed so a slot is a message's size.
        assert!(std::mem::size_of::<Frame>() >= 150);
        assert!(
            std::mem::size_of::<Outbound>() <= 48,
            "{}",
            std::mem::size_of::<Outbound>()
        );
        let hello = crate::proto::frame::Frame::Hello(crate::proto::frame::Hello {
            version: 1,
            project_id: "p".into(),
            node_id: "n".into(),
            heartbeat: Duration::from_secs(1),
            read_deadline: Duration::from_secs(2),
            window: 3,
            lanes: [0, 1].map(|l| crate::proto::frame::HelloLane {
                up_stream: l,
                up_first: 1,
                down_stream: 2,
                down_seq: 3,
            }),
        });
        let message = Frame::Message {
            lane: Lane::Bulk,
            seq: 7,
            payload: vec![1, 2, 3],
        };
        for f in [hello, message, Frame::Heartbeat] {
            assert_eq!(Frame::from(CompactFrame::from(f.clone())), f);
        }
    }

    #[test]
    fn waiting_holds_the_callers_future_once() {
        // Every idle node's task waits in Link::wait: a copy of what the caller races it
        // against would cost each of them that future's size again.
        let peer = "127.0.0.1:1".parse().unwrap();
        let (link, _tasks) = Link::new(Protocol::Websocket, peer);
        let session = Session::cloud(Instant::now(), Duration::from_secs(30), 64);
        let other = async {
            let held = [1u8; 4096];
            std::future::pending::<()>().await;
            Wake::Stop(CloseCode::from_code(held[0].into()).unwrap_or(CloseCode::Replaced))
        };
        let other_size = std::mem::size_of_val(&other);
        assert!(other_size >= 4096, "{other_size}");
        let wait = link.wait(&session, other);
        let size = std::mem::size_of_val(&wait);
        assert!(
            size < other_size + 1024,
            "{size} bytes to wait with {other_size} of the caller's"
        );
    }

    #[test]
    fn a_reader_stops_at_the_inbound_frame_budget() {
        smol::block_on(async {
            let peer = "127.0.0.1:1".parse().unwrap();
            let (link, tasks) = Link::new(Protocol::Websocket, peer);
            let reader = tasks.reader();
            let ack = || {
                Inbound::Frame(
                    Frame::Ack {
                        lane: Lane::Bulk,
                        seq: 1,
                    }
                    .encode(),
                )
            };
            for _ in 0..INBOUND_QUEUE {
                assert!(reader.deliver(ack()).await);
            }
            let next = reader.deliver(ack());
            let mut next = std::pin::pin!(next);
            let waited = timeout(Duration::from_millis(100), next.as_mut()).await;
            assert!(
                waited.is_none(),
                "the reader went past {INBOUND_QUEUE} frames"
            );
            assert!(matches!(link.recv().await, Inbound::Frame(_)));
            assert_eq!(timeout(Duration::from_secs(5), next).await, Some(true));
            assert_eq!(link.inbound[0].len(), INBOUND_QUEUE);
        });
    }

    #[test]
    fn a_reader_stops_at_the_inbound_byte_budget() {
        smol::block_on(async {
            let peer = "127.0.0.1:1".parse().unwrap();
            let (link, tasks) = Link::new(Protocol::Websocket, peer);
            // Bulk messages (type 0x10, lane 1) of 1 MiB.
            let frame = || {
                let mut bytes = vec![0; 1 << 20];
                bytes[..2].copy_from_slice(&[0x10, 1]);
                Inbound::Frame(bytes)
            };
            let reader = tasks.reader();
            // The session takes nothing: four 1 MiB frames fill the budget ...
            for _ in 0..INBOUND_BYTES >> 20 {
                assert!(reader.deliver(frame()).await);
            }
            // ... and the reader waits with the fifth rather than reading on.
            let fifth = reader.deliver(frame());
            let mut fifth = std::pin::pin!(fifth);
            let waited = timeout(Duration::from_millis(100), fifth.as_mut()).await;
            assert!(waited.is_none(), "the reader went past the budget");
            assert_eq!(link.inbound[1].len(), INBOUND_BYTES >> 20);
            // The urgent lane has a budget of its own: an acknowledgement still goes through,
            // and the session takes it before the bulk backlog.
            let ack = Frame::Ack {
                lane: Lane::Bulk,
                seq: 1,
            };
            let urgent = timeout(
                Duration::from_secs(5),
                reader.deliver(Inbound::Frame(ack.encode())),
            );
            assert_eq!(urgent.await, Some(true));
            assert!(matches!(link.recv().await, Inbound::Frame(b) if b == ack.encode()));
            // One bulk frame taken by the session makes room for the fifth.
            assert!(matches!(link.recv().await, Inbound::Frame(_)));
            assert_eq!(timeout(Duration::from_secs(5), fifth).await, Some(true));
            assert_eq!(link.inbound[1].len(), INBOUND_BYTES >> 20);
        });
    }
}
