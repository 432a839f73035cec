//! The messages of an open link: between the durable queues, the session and local delivery.
//!
//! Both hubs use it the same way: [`Exchange::streams`] goes into HELLO (edge) or
//! [`Session::accept`] (cloud); each session event goes through [`Exchange::handle`]; after each
//! round [`Exchange::fill`] tops the window up from the outgoing queue.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::local::{Delivery, Local};
use crate::message::Message;
use crate::proto::session::Streams;
use crate::proto::{CloseCode, Event, Session};
use crate::queue::Queue;
use crate::store::{Reader, RecvState};

/// The receiving half's state for one peer stream, kept across links.
///
/// Repeats are recognised by sequence number within the peer's stream, and by nothing else: a
/// `msg_id` is the choice of whichever application published the message, so two messages with
/// the same id are two messages, and both are delivered.
pub struct Inbound {
    state: RecvState,
    /// The peer stream and the last sequence number delivered from it.
    stream: u64,
    delivered: u64,
}

impl Inbound {
    /// Loads the receive state stored at `path`.
    pub fn open(path: &Path) -> io::Result<Arc<Mutex<Inbound>>> {
        let state = RecvState::open(path)?;
        let (stream, delivered) = state.get();
        Ok(Arc::new(Mutex::new(Inbound {
            state,
            stream,
            delivered,
        })))
    }

    fn save(&mut self) {
        if let Err(e) = self.state.save(self.stream, self.delivered, false) {
            log::error!("cannot record received messages: {e}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Messages most sent per [`Exchange::fill`] round.
const FILL_BATCH: usize = 512;
/// Payload bytes sent and not yet acknowledged at most (besides the window's count of messages),
/// so a peer that stops reading holds this much of this side's memory, not window x the largest
/// message (256 x 1 MiB by default). One message is always let through, whatever its size.
pub const MAX_IN_FLIGHT_BYTES: usize = 4 << 20;

/// One link's message traffic.
pub struct Exchange {
    out: Arc<Queue>,
    inbound: Arc<Mutex<Inbound>>,
    local: Arc<Local>,
    /// Cloud side: `node/{node-id}/`, put before the resource of every message from the node.
    prefix: Option<String>,
    reader: Option<Reader>,
    batch: Vec<(u64, Vec<u8>)>,
    /// Sent and unacknowledged: each message's sequence number and size, and their total.
    in_flight: VecDeque<(u64, usize)>,
    in_flight_bytes: usize,
}

impl Exchange {
    /// An exchange sending from `out`, receiving into `inbound` and delivering to `local`.
    pub fn new(
        out: Arc<Queue>,
        inbound: Arc<Mutex<Inbound>>,
        local: Arc<Local>,
        prefix: Option<String>,
    ) -> Exchange {
        Exchange {
            out,
            inbound,
            local,
            prefix,
            reader: None,
            batch: Vec::new(),
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
        }
    }

    /// This side's stream positions, for HELLO or [`Session::accept`].
    pub fn streams(&self) -> Streams {
        let inbound = lock(&self.inbound);
        Streams {
            out_stream: self.out.stream(),
            out_first: self.out.first(),
            in_stream: inbound.stream,
            in_seq: inbound.delivered,
        }
    }

    /// Handles the message events of `session`; returns any other event for the caller.
    pub fn handle(&mut self, session: &mut Session, event: Event) -> Option<Event> {
        match event {
            Event::Message { seq, payload } => {
                let mut msg = match Message::decode(&payload) {
                    Ok(m) => m,
                    Err(e) => {
                        session.close(CloseCode::ProtocolError, format!("message {seq}: {e}"));
                        return None;
                    }
                };
                {
                    // The session passes each sequence number once: a repeat never gets here.
                    let mut inbound = lock(&self.inbound);
                    inbound.stream = session.inbound_stream();
                    inbound.delivered = seq;
                }
                let resource = msg.resource.clone();
                if let Some(prefix) = &self.prefix {
                    msg.resource = format!("{prefix}{resource}");
                }
                if let Delivery::Refused(mut reply) = self.local.deliver(&msg) {
                    reply.resource = resource;
                    self.send_back(reply);
                }
                None
            }
            Event::Acked(seq) => {
                while let Some(&(s, len)) = self.in_flight.front() {
                    if s > seq {
                        break;
                    }
                    self.in_flight.pop_front();
                    self.in_flight_bytes -= len;
                }
                match self.out.ack(seq) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        session.close(CloseCode::ProtocolError, e.to_string());
                    }
                    Err(e) => log::error!("cannot reclaim acknowledged messages: {e}"),
                }
                None
            }
            Event::Commit(seq) => {
                {
                    let mut inbound = lock(&self.inbound);
                    let stream = session.inbound_stream();
                    if inbound.stream == stream {
                        inbound.delivered = inbound.delivered.max(seq);
                    } else {
                        // A new peer stream (a reinstalled gateway, a wiped queue): its numbers
                        // start over, and the old stream's position means nothing for it.
                        inbound.stream = stream;
                        inbound.delivered = seq;
                    }
                    inbound.save();
                }
                session.committed(seq);
                None
            }
            other => Some(other),
        }
    }

    /// Queues a hub-made answer (an error for a request nobody took) back to the peer.
    fn send_back(&self, reply: Message) {
        match reply.encode() {
            Ok(bytes) => {
                let done = self.out.submit_with(vec![bytes], false);
                smol::spawn(async move {
                    if let Err(e) = done.await {
                        log::warn!("cannot answer a request nobody took: {e}");
                    }
                })
                .detach();
            }
            Err(e) => log::warn!("cannot answer a request nobody took: {e}"),
        }
    }

    /// Sends queued messages while the window allows.
    pub fn fill(&mut self, session: &mut Session) {
        loop {
            let room = session.send_capacity() as usize;
            let visible = self.out.visible();
            let budget = MAX_IN_FLIGHT_BYTES.saturating_sub(self.in_flight_bytes);
            if room == 0 || budget == 0 || session.next_send_seq() >= visible {
                return;
            }
            if self
                .reader
                .as_ref()
                .is_none_or(|r| r.position() != session.next_send_seq())
            {
                match self.out.reader(session.next_send_seq()) {
                    Ok(r) => self.reader = Some(r),
                    Err(e) => {
                        session.close(
                            CloseCode::ProtocolError,
                            format!("cannot read the queue: {e}"),
                        );
                        return;
                    }
                }
            }
            let reader = self.reader.as_mut().expect("set above");
            self.batch.clear();
            match reader.read_limited(visible, room.min(FILL_BATCH), budget, &mut self.batch) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    log::error!("cannot read the queue: {e}");
                    self.reader = None;
                    return;
                }
            }
            for (seq, payload) in self.batch.drain(..) {
                if seq != session.next_send_seq() {
                    log::error!(
                        "queue returned message {seq}, expected {}",
                        session.next_send_seq()
                    );
                    self.reader = None;
                    return;
                }
                self.in_flight.push_back((seq, payload.len()));
                self.in_flight_bytes += payload.len();
                session.send_message(seq, payload);
            }
        }
    }

    /// Finishes when the outgoing queue has new messages.
    pub async fn added(&self) {
        self.out.added().await
    }

    /// The link ended: record what was delivered, so the next link resumes after it.
    pub fn finish(&self) {
        lock(&self.inbound).save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::VERSION;
    use crate::proto::frame::{Frame, Hello};
    use std::time::{Duration, Instant};

    fn hello(up_stream: u64) -> Hello {
        Hello {
            version: VERSION,
            project_id: "p".into(),
            node_id: "n".into(),
            heartbeat: Duration::from_secs(1),
            read_deadline: Duration::from_secs(10),
            window: 64,
            up_stream,
            up_first: 1,
            down_stream: 0,
            down_seq: 0,
        }
    }

    fn message(n: u8) -> Vec<u8> {
        message_with_id(n, &format!("m{n}"))
    }

    fn message_with_id(n: u8, id: &str) -> Vec<u8> {
        Message {
            id: id.to_owned(),
            resource: "r".into(),
            content: n.to_string().into_bytes(),
            ..Message::default()
        }
        .encode()
        .unwrap()
    }

    /// A cloud-side session for an edge whose outbox stream is `up_stream`, fed `count` messages.
    fn link(ex: &mut Exchange, up_stream: u64, count: u8) -> Session {
        let now = Instant::now();
        let mut s = Session::cloud(now, Duration::from_secs(30), 64);
        s.handle_frame(now, Frame::Hello(hello(up_stream)));
        assert!(matches!(s.poll_event(), Some(Event::Hello(_))));
        s.accept(now, ex.streams());
        for seq in 1..=count {
            s.handle_frame(
                now,
                Frame::Message {
                    seq: u64::from(seq),
                    payload: message(seq),
                },
            );
        }
        s.handle_timeout(now + Duration::from_secs(1));
        while let Some(ev) = s.poll_event() {
            ex.handle(&mut s, ev);
        }
        s
    }

    /// An outgoing queue in `dir` (at most 100 messages, window 64).
    fn queue(dir: &Path) -> Arc<Queue> {
        let config = crate::config::QueueConfig {
            dir: dir.join("out"),
            max_messages: 100,
            max_bytes: 1 << 30,
            fsync: crate::store::Fsync::Never,
            window: 64,
        };
        Queue::open(&config.dir, &config).unwrap()
    }

    /// An exchange sending from `out`, with its receive state in `dir`.
    fn exchange(dir: &Path, out: Arc<Queue>) -> (Exchange, Arc<Mutex<Inbound>>) {
        let inbound = Inbound::open(&dir.join("in.state")).unwrap();
        let local = Arc::new(Local::new(Duration::from_secs(1)));
        (Exchange::new(out, inbound.clone(), local, None), inbound)
    }

    #[test]
    fn a_new_peer_stream_does_not_inherit_the_old_position() {
        let tmp = tempfile::tempdir().unwrap();
        let out = queue(tmp.path());
        let (mut ex, _) = exchange(tmp.path(), out);

        link(&mut ex, 0xaaaa, 5);
        assert_eq!((ex.streams().in_stream, ex.streams().in_seq), (0xaaaa, 5));
        // The gateway is reinstalled: a new outbox stream, numbered from 1 again. Its first link
        // drops before any message arrives; the position recorded must be the new stream's.
        link(&mut ex, 0xbbbb, 0);
        assert_eq!((ex.streams().in_stream, ex.streams().in_seq), (0xbbbb, 0));
        let reopened = Inbound::open(&tmp.path().join("in.state")).unwrap();
        let state = lock(&reopened);
        assert_eq!(
            (state.stream, state.delivered),
            (0xbbbb, 0),
            "and that is what is on disk"
        );
    }

    #[test]
    fn messages_sharing_a_msg_id_are_all_delivered() {
        // Applications choose msg_ids; two of them (or one, twice) may choose the same. Only the
        // link's sequence numbers tell a repeat; three messages numbered 1, 2, 3 are three.
        let tmp = tempfile::tempdir().unwrap();
        let out = queue(tmp.path());
        let inbound = Inbound::open(&tmp.path().join("in.state")).unwrap();
        let local = Arc::new(Local::new(Duration::from_secs(1)));
        let (app, app_rx) = crate::local::app_channel("test", 16, 1 << 20);
        local.subscribe(crate::local::Filter::default(), app);
        let mut ex = Exchange::new(out, inbound, local, None);

        let now = Instant::now();
        let mut s = Session::cloud(now, Duration::from_secs(30), 64);
        s.handle_frame(now, Frame::Hello(hello(0xaaaa)));
        assert!(matches!(s.poll_event(), Some(Event::Hello(_))));
        s.accept(now, ex.streams());
        for seq in 1..=3 {
            let payload = message_with_id(seq, "fixed-1");
            s.handle_frame(
                now,
                Frame::Message {
                    seq: u64::from(seq),
                    payload,
                },
            );
        }
        // A retransmission of number 2 is a repeat, whatever its id.
        s.handle_frame(
            now,
            Frame::Message {
                seq: 2,
                payload: message_with_id(2, "other"),
            },
        );
        while let Some(ev) = s.poll_event() {
            ex.handle(&mut s, ev);
        }
        let got: Vec<Message> = std::iter::from_fn(|| app_rx.try_recv())
            .map(|t| Message::from_json(&t).unwrap())
            .collect();
        let contents: Vec<&[u8]> = got.iter().map(|m| &m.content[..]).collect();
        assert_eq!(contents, [&b"1"[..], b"2", b"3"]);
        assert!(got.iter().all(|m| m.id == "fixed-1"));
    }

    #[test]
    fn unacknowledged_bytes_are_bounded_as_well_as_messages() {
        let tmp = tempfile::tempdir().unwrap();
        let out = queue(tmp.path());
        let big = vec![7u8; 1 << 20];
        smol::block_on(out.append(vec![big; 10])).unwrap();
        let (mut ex, _) = exchange(tmp.path(), out);

        let mut s = link(&mut ex, 0xaaaa, 0);
        assert_eq!(s.send_capacity(), 64, "the window would allow all ten");
        ex.fill(&mut s);
        assert_eq!(s.next_send_seq(), 5, "4 MiB sent, no more");
        ex.fill(&mut s);
        assert_eq!(s.next_send_seq(), 5, "still 4 MiB unacknowledged");
        let now = Instant::now();
        s.handle_frame(now, Frame::Ack(3));
        while let Some(ev) = s.poll_event() {
            ex.handle(&mut s, ev);
        }
        ex.fill(&mut s);
        assert_eq!(s.next_send_seq(), 8, "three acknowledged, three more sent");
    }

    #[test]
    fn a_peer_claiming_impossible_progress_is_closed_on() {
        let tmp = tempfile::tempdir().unwrap();
        let out = queue(tmp.path());
        let (mut ex, _) = exchange(tmp.path(), out.clone());
        let now = Instant::now();
        let mut s = Session::cloud(now, Duration::from_secs(30), 64);
        // The edge says it processed this queue's stream up to the last number there is.
        let hello = Hello {
            down_stream: out.stream(),
            down_seq: u64::MAX - 1,
            ..hello(0xaaaa)
        };
        s.handle_frame(now, Frame::Hello(hello));
        assert!(matches!(s.poll_event(), Some(Event::Hello(_))));
        s.accept(now, ex.streams());
        let mut closed = None;
        while let Some(ev) = s.poll_event() {
            if let Some(Event::Close(code, why)) = ex.handle(&mut s, ev) {
                closed = Some((code, why));
            }
        }
        let (code, why) = closed.expect("the link is closed");
        assert_eq!(code, CloseCode::ProtocolError);
        assert!(why.contains("claims to have processed"), "{why}");
        assert_eq!(out.first(), 1, "and the queue's numbering is untouched");
    }
}
