//! The messages of an open link: between the durable queues, the session and local delivery.
//!
//! Both hubs use it the same way: [`Exchange::streams`] goes into HELLO (edge) or
//! [`Session::accept`] (cloud); each session event goes through [`Exchange::handle`]; after each
//! round [`Exchange::fill`] tops the window up from the outgoing queue.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::local::{Delivery, Local};
use crate::message::Message;
use crate::proto::session::Streams;
use crate::proto::{CloseCode, Event, Session};
use crate::queue::Queue;
use crate::store::{Reader, RecvState};

/// How many recent message ids a receiver remembers to drop repeats.
const RECENT_IDS: usize = 8192;

/// The receiving half's state for one peer stream, kept across links.
pub struct Inbound {
    state: RecvState,
    /// The peer stream and the last sequence number delivered from it.
    stream: u64,
    delivered: u64,
    recent_set: HashSet<String>,
    recent: VecDeque<String>,
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
            recent_set: HashSet::new(),
            recent: VecDeque::new(),
        })))
    }

    /// Whether `id` was seen recently; remembers it.
    fn seen(&mut self, id: &str) -> bool {
        if id.is_empty() || self.recent_set.contains(id) {
            return !id.is_empty();
        }
        if self.recent.len() == RECENT_IDS {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        self.recent.push_back(id.to_owned());
        self.recent_set.insert(id.to_owned());
        false
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

/// One link's message traffic.
pub struct Exchange {
    out: Arc<Queue>,
    inbound: Arc<Mutex<Inbound>>,
    local: Arc<Local>,
    /// Cloud side: `node/{node-id}/`, put before the resource of every message from the node.
    prefix: Option<String>,
    reader: Option<Reader>,
    batch: Vec<(u64, Vec<u8>)>,
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
                    let mut inbound = lock(&self.inbound);
                    inbound.stream = session.inbound_stream();
                    inbound.delivered = seq;
                    if inbound.seen(&msg.id) {
                        log::debug!("dropped a repeat of message {}", msg.id);
                        return None;
                    }
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
                if let Err(e) = self.out.ack(seq) {
                    log::error!("cannot reclaim acknowledged messages: {e}");
                }
                None
            }
            Event::Commit(seq) => {
                {
                    let mut inbound = lock(&self.inbound);
                    inbound.stream = session.inbound_stream();
                    inbound.delivered = inbound.delivered.max(seq);
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
                let done = self.out.submit(vec![bytes]);
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
            if room == 0 || session.next_send_seq() >= visible {
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
            match reader.read(visible, room.min(FILL_BATCH), &mut self.batch) {
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
