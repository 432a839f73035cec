//! The link abstraction both sides use, whatever carries it.
//!
//! A [`Link`] is an open WebSocket or QUIC connection split into a reader task and a writer task.
//! The task that owns the [`Session`](crate::proto::Session) only sends frames into the link and
//! receives [`Inbound`] items from it, so it never blocks on a socket: a stalled write is noticed
//! by the writer task (the write deadline) and reported as an inbound close.

pub mod dial;
pub mod quic;
pub mod ws;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use smol::channel::{Receiver, Sender};
use smol::future::FutureExt;

use crate::config::Protocol;
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

    /// A failed [`dial::race`] as one error naming every address tried: of the kind of the final
    /// answer that ended it, if one did, else [`LinkError::Io`].
    pub fn from_race(failed: dial::Failed<LinkError>) -> LinkError {
        let why = failed.to_string();
        match failed.final_error() {
            Some(LinkError::CertificateRefused(_)) => LinkError::CertificateRefused(why),
            Some(LinkError::Refused(_)) => LinkError::Refused(why),
            _ => LinkError::Io(why),
        }
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
            LinkError::CertificateRefused(why) | LinkError::Refused(why) | LinkError::Io(why) => {
                f.write_str(why)
            }
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

/// What the session's task asks the writer task to do.
#[derive(Debug)]
enum Outbound {
    Frame(Frame),
    Close(CloseCode),
}

/// An open link: frames in, frames out.
pub struct Link {
    /// The transport.
    pub protocol: Protocol,
    /// The peer's address.
    pub peer: SocketAddr,
    inbound: Receiver<Inbound>,
    budget: Arc<InboundBudget>,
    outbound: Sender<Outbound>,
    writer_done: Receiver<()>,
    /// Dropped with the link, which stops the reader task.
    _alive: Sender<()>,
}

/// Inbound items buffered between the reader task and the session task.
const INBOUND_QUEUE: usize = 64;
/// Bytes of frames read from the peer and not yet taken by the session, beyond which the reader
/// stops reading: the rest waits in the peer's socket or QUIC flow control, not in this process.
/// With the frame the reader holds while it waits, a link buffers at most this plus one frame
/// (16 MiB), not [`INBOUND_QUEUE`] frames of 16 MiB each.
pub const INBOUND_BYTES: usize = 4 << 20;

/// The bytes waiting in a link's inbound queue, and a wake-up for a reader waiting for room.
struct InboundBudget {
    queued: AtomicUsize,
    room: (Sender<()>, Receiver<()>),
}

impl InboundBudget {
    /// Waits until fewer than [`INBOUND_BYTES`] are queued, then counts `len` more.
    async fn reserve(&self, len: usize) {
        while self.queued.load(Ordering::Acquire) >= INBOUND_BYTES {
            if self.room.1.recv().await.is_err() {
                return;
            }
        }
        self.queued.fetch_add(len, Ordering::AcqRel);
    }

    /// `len` bytes were taken by the session.
    fn release(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::AcqRel);
        let _ = self.room.0.try_send(());
    }
}

impl Link {
    /// Creates the channels of a link; the transport spawns its reader and writer tasks on the
    /// returned [`LinkTasks`].
    fn new(protocol: Protocol, peer: SocketAddr) -> (Link, LinkTasks) {
        let (in_tx, in_rx) = smol::channel::bounded(INBOUND_QUEUE);
        let budget = Arc::new(InboundBudget {
            queued: AtomicUsize::new(0),
            room: smol::channel::bounded(1),
        });
        // Unbounded: the session bounds what it queues (heartbeats and, later, its window).
        let (out_tx, out_rx) = smol::channel::unbounded();
        let (done_tx, done_rx) = smol::channel::bounded(1);
        let (alive_tx, alive_rx) = smol::channel::bounded(1);
        (
            Link {
                protocol,
                peer,
                inbound: in_rx,
                budget: budget.clone(),
                outbound: out_tx,
                writer_done: done_rx,
                _alive: alive_tx,
            },
            LinkTasks {
                inbound: in_tx,
                budget,
                outbound: out_rx,
                writer_done: done_tx,
                alive: alive_rx,
            },
        )
    }

    /// Queues a frame for the writer task.
    pub fn send(&self, frame: Frame) {
        let _ = self.outbound.try_send(Outbound::Frame(frame));
    }

    /// The next item from the peer; `Closed` once the link is gone.
    pub async fn recv(&self) -> Inbound {
        let item = self
            .inbound
            .recv()
            .await
            .unwrap_or(Inbound::Closed(LinkError::Eof));
        if let Inbound::Frame(bytes) = &item {
            self.budget.release(bytes.len());
        }
        item
    }

    /// Sends everything `session` has queued.
    pub fn flush(&self, session: &mut Session, now: Instant) {
        while let Some(f) = session.poll_transmit(now) {
            self.send(f);
        }
    }

    /// Closes the link with `code` after the frames already queued, waiting at most `linger` for
    /// the writer to finish so the peer learns why.
    pub async fn close(self, code: CloseCode, linger: Duration) {
        let _ = self.outbound.try_send(Outbound::Close(code));
        let _ = self
            .writer_done
            .recv()
            .or(async {
                smol::Timer::after(linger).await;
                Ok(())
            })
            .await;
    }

    /// Waits for whichever comes first: an inbound item, the session's next timer, or `other`
    /// (the caller's stop signal, new messages to send, …).
    pub async fn wait<S: Future<Output = Wake>>(&self, session: &Session, other: S) -> Wake {
        let timer = async {
            match session.poll_timeout() {
                Some(at) => smol::Timer::at(at).await,
                None => smol::Timer::never().await,
            };
            Wake::Timer
        };
        let inbound = async { Wake::Inbound(self.recv().await) };
        inbound.or(other).or(timer).await
    }
}

/// Why [`Link::wait`] returned.
#[derive(Debug)]
pub enum Wake {
    /// Something arrived from the peer (or the link broke).
    Inbound(Inbound),
    /// The session's timer is due.
    Timer,
    /// The caller wants the link closed with this code.
    Stop(CloseCode),
    /// There are new messages to send.
    Added,
}

/// The task ends of a link's channels.
struct LinkTasks {
    inbound: Sender<Inbound>,
    budget: Arc<InboundBudget>,
    outbound: Receiver<Outbound>,
    writer_done: Sender<()>,
    /// Closes when the [`Link`] is dropped.
    alive: Receiver<()>,
}

impl LinkTasks {
    /// Runs `read` (the transport's read loop) until it ends or the link is dropped.
    fn spawn_reader(&self, read: impl Future<Output = ()> + Send + 'static) {
        let alive = self.alive.clone();
        smol::spawn(read.or(async move {
            let _ = alive.recv().await;
        }))
        .detach();
    }
}

/// Hands an item from a reader task to the session task, first waiting while
/// [`INBOUND_BYTES`] are queued already; `false` when the reader should stop (the link closed, or
/// its owner is gone).
async fn deliver(inbound: &Sender<Inbound>, budget: &InboundBudget, item: Inbound) -> bool {
    let last = matches!(item, Inbound::Closed(_));
    if let Inbound::Frame(bytes) = &item {
        budget.reserve(bytes.len()).await;
    }
    inbound.send(item).await.is_ok() && !last
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
    fn a_reader_stops_at_the_inbound_byte_budget() {
        smol::block_on(async {
            let peer = "127.0.0.1:1".parse().unwrap();
            let (link, tasks) = Link::new(Protocol::Websocket, peer);
            let frame = || Inbound::Frame(vec![0; 1 << 20]);
            // The session takes nothing: four 1 MiB frames fill the budget ...
            for _ in 0..INBOUND_BYTES >> 20 {
                assert!(deliver(&tasks.inbound, &tasks.budget, frame()).await);
            }
            // ... and the reader waits with the fifth rather than reading on.
            let fifth = deliver(&tasks.inbound, &tasks.budget, frame());
            let mut fifth = std::pin::pin!(fifth);
            let waited = timeout(Duration::from_millis(100), fifth.as_mut()).await;
            assert!(waited.is_none(), "the reader went past the budget");
            assert_eq!(link.inbound.len(), INBOUND_BYTES >> 20);
            // One taken by the session makes room for it.
            assert!(matches!(link.recv().await, Inbound::Frame(_)));
            assert_eq!(timeout(Duration::from_secs(5), fifth).await, Some(true));
            assert_eq!(link.inbound.len(), INBOUND_BYTES >> 20);
        });
    }
}
