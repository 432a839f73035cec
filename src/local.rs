//! Local delivery: the applications connected to this hub, their subscriptions, and the sync
//! requests they are waiting on.
//!
//! A message arriving from the other side goes to the one application waiting for it (a response:
//! its `parent_msg_id` names a pending request), or else to every subscription it matches (group
//! equal, resource starting with the prefix). A message nobody takes is counted; a sync request
//! nobody takes is answered with an error.
//!
//! Identifiers an application picks are scoped to its connection: a sync request leaves this hub
//! under an id the hub makes (unique per request), and the answer to that id is handed back to
//! the one connection that asked, with `parent_msg_id` restored to the id it chose. Two
//! applications may therefore use the same `msg_id` without either seeing the other's answer.
//!
//! Each application has a delivery queue bounded in messages and in bytes
//! ([`app_channel`]); one that lets it fill up is cut off (its connection is closed with a
//! reason) rather than allowed to grow the hub's memory or hold the link back.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use smol::channel::{Receiver, Sender};
use smol::future::FutureExt;

use crate::message::Message;

/// What a subscription selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `route.group` must equal this, when given.
    pub group: Option<String>,
    /// `route.resource` must start with this, when given.
    pub resource: Option<String>,
}

impl Filter {
    /// Whether `msg` is selected.
    pub fn matches(&self, msg: &Message) -> bool {
        self.group.as_ref().is_none_or(|g| *g == msg.group)
            && self
                .resource
                .as_ref()
                .is_none_or(|p| msg.resource.starts_with(p.as_str()))
    }
}

/// What the two ends of one application's delivery queue share.
struct AppShared {
    /// Unique among the connections of this process.
    id: u64,
    /// Who the application is, for logs (its address).
    name: String,
    /// Messages queued (the channel itself is unbounded: a bounded one would allocate room for
    /// `max_messages` up front, megabytes for every idle connection).
    messages: AtomicUsize,
    max_messages: usize,
    /// Bytes of JSON text queued.
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Holds a token once the writer took something (room for a waiting [`AppSender::send`]).
    room_tx: Sender<()>,
    room_rx: Receiver<()>,
    /// Why the application was cut off, once it was.
    cut: Mutex<Option<String>>,
    /// Closed when the application is cut off; nothing is ever sent on it.
    cut_tx: Sender<()>,
    cut_rx: Receiver<()>,
}

impl AppShared {
    /// Counts one more message of `len` bytes in, unless that would pass either bound (one
    /// message is always let into an empty queue, whatever its size).
    fn reserve(&self, len: usize) -> bool {
        let counted = self
            .messages
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < self.max_messages).then_some(queued + 1)
            })
            .is_ok();
        if !counted {
            return false;
        }
        let fits = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                let total = queued.saturating_add(len);
                (queued == 0 || total <= self.max_bytes).then_some(total)
            })
            .is_ok();
        if !fits {
            self.messages.fetch_sub(1, Ordering::AcqRel);
        }
        fits
    }

    /// Counts one message of `len` bytes out, and wakes a sender waiting for room.
    fn release(&self, len: usize) {
        self.messages.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(len, Ordering::AcqRel);
        let _ = self.room_tx.try_send(());
    }

    fn cut_reason(&self) -> Option<String> {
        lock(&self.cut).clone()
    }

    async fn cut_off_wait(&self) {
        let _ = self.cut_rx.recv().await;
    }
}

/// Why [`AppSender::try_send`] did not queue a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSendError {
    /// The queue holds `messages` messages and `bytes` bytes: this one would pass its bound.
    Full {
        /// Messages queued.
        messages: usize,
        /// Bytes queued.
        bytes: usize,
    },
    /// The application is gone or was cut off.
    Closed,
}

/// The hub's end of one application's delivery queue: JSON texts for its connection, in order.
#[derive(Clone)]
pub struct AppSender {
    tx: Sender<String>,
    shared: Arc<AppShared>,
}

/// The connection's end of its delivery queue, read by its writer.
pub struct AppReceiver {
    rx: Receiver<String>,
    shared: Arc<AppShared>,
}

/// A delivery queue for the application `name` (its address, for logs), holding at most
/// `max_messages` messages and `max_bytes` bytes of JSON text (one message is always let into an
/// empty queue, whatever its size). Memory follows what is queued: an empty queue takes a few
/// hundred bytes, whatever its bounds.
pub fn app_channel(
    name: impl Into<String>,
    max_messages: usize,
    max_bytes: usize,
) -> (AppSender, AppReceiver) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // Unbounded, with the bounds kept by `AppShared::reserve`: a bounded channel allocates all
    // of its slots when it is made.
    let (tx, rx) = smol::channel::unbounded();
    let (room_tx, room_rx) = smol::channel::bounded(1);
    let (cut_tx, cut_rx) = smol::channel::bounded(1);
    let shared = Arc::new(AppShared {
        id: NEXT.fetch_add(1, Ordering::Relaxed),
        name: name.into(),
        messages: AtomicUsize::new(0),
        max_messages: max_messages.max(1),
        bytes: AtomicUsize::new(0),
        max_bytes,
        room_tx,
        room_rx,
        cut: Mutex::new(None),
        cut_tx,
        cut_rx,
    });
    (
        AppSender {
            tx,
            shared: shared.clone(),
        },
        AppReceiver { rx, shared },
    )
}

impl AppSender {
    /// Queues `text` if it fits under both bounds, without waiting.
    pub fn try_send(&self, text: String) -> Result<(), AppSendError> {
        if self.tx.is_closed() {
            return Err(AppSendError::Closed);
        }
        let len = text.len();
        if !self.shared.reserve(len) {
            return Err(self.full());
        }
        match self.tx.try_send(text) {
            Ok(()) => Ok(()),
            Err(_) => {
                // Unbounded: only a closed channel refuses.
                self.shared.release(len);
                Err(AppSendError::Closed)
            }
        }
    }

    /// Queues `text`, waiting for room (the application's own notices: an application that
    /// does not read them is not read from either). `Err` once the application is gone or cut
    /// off. Only one task may wait in `send` on a queue at a time.
    pub async fn send(&self, text: String) -> Result<(), AppSendError> {
        let len = text.len();
        while !self.shared.reserve(len) {
            if self.tx.is_closed() {
                return Err(AppSendError::Closed);
            }
            let room = async { self.shared.room_rx.recv().await.is_ok() };
            let cut = async {
                self.shared.cut_off_wait().await;
                false
            };
            if !room.or(cut).await {
                return Err(AppSendError::Closed);
            }
        }
        match self.tx.send(text).await {
            Ok(()) => Ok(()),
            Err(_) => {
                self.shared.release(len);
                Err(AppSendError::Closed)
            }
        }
    }

    fn full(&self) -> AppSendError {
        AppSendError::Full {
            messages: self.shared.messages.load(Ordering::Acquire),
            bytes: self.shared.bytes.load(Ordering::Acquire),
        }
    }

    /// Cuts the application off: nothing more is queued, its writer stops and its connection is
    /// closed with `why`. Returns `false` when it was cut off already (the first reason stays).
    pub fn cut_off(&self, why: String) -> bool {
        {
            let mut cut = lock(&self.shared.cut);
            if cut.is_some() {
                return false;
            }
            *cut = Some(why);
        }
        self.tx.close();
        self.shared.cut_tx.close();
        let _ = self.shared.room_tx.try_send(());
        true
    }

    /// Finishes once the application is cut off.
    pub async fn cut_off_wait(&self) {
        self.shared.cut_off_wait().await
    }

    /// Whether this and `other` are the same application's queue.
    pub fn same_app(&self, other: &AppSender) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether nothing more can be queued (the application is gone or cut off).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Who the application is, for logs.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The largest number of bytes queued before the application counts as too slow.
    pub fn max_bytes(&self) -> usize {
        self.shared.max_bytes
    }
}

impl AppReceiver {
    fn took(&self, text: Option<String>) -> Option<String> {
        let text = text?;
        self.shared.release(text.len());
        // Closed by `cut_off`, after it recorded why: no lock per message.
        if self.shared.cut_tx.is_closed() {
            return None;
        }
        Some(text)
    }

    /// The next text for the application; `None` once it is cut off, or once every sender is
    /// gone and nothing is left.
    pub async fn recv(&self) -> Option<String> {
        // `cut_off` closes the channel, which wakes this; what is still queued then is dropped
        // by `took`.
        let text = self.rx.recv().await.ok();
        self.took(text)
    }

    /// The writer can no longer write (the application's connection failed): nothing more is
    /// queued, and a sender waiting for room ([`AppSender::send`]) gets `Err` instead of waiting
    /// for a writer that will never take anything again.
    pub fn close(&self) {
        self.rx.close();
        let _ = self.shared.room_tx.try_send(());
    }

    /// The next text if one is waiting; `None` as for [`recv`](Self::recv) or when none is.
    pub fn try_recv(&self) -> Option<String> {
        self.took(self.rx.try_recv().ok())
    }

    /// Finishes once the application is cut off.
    pub async fn cut_off_wait(&self) {
        self.shared.cut_off_wait().await
    }

    /// Why the application was cut off, if it was.
    pub fn cut_reason(&self) -> Option<String> {
        self.shared.cut_reason()
    }

    /// Drops everything still queued; returns how many messages and bytes that was.
    pub fn discard(&self) -> (usize, usize) {
        let (mut messages, mut bytes) = (0, 0);
        while let Ok(text) = self.rx.try_recv() {
            messages += 1;
            bytes += text.len();
            self.shared.release(text.len());
        }
        (messages, bytes)
    }
}

impl fmt::Debug for AppSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSender")
            .field("name", &self.shared.name)
            .field("messages", &self.tx.len())
            .field("bytes", &self.shared.bytes.load(Ordering::Relaxed))
            .finish()
    }
}

struct Subscription {
    id: u64,
    filter: Filter,
    app: AppSender,
}

/// A sync request waiting for its answer.
struct Waiting {
    app: AppSender,
    /// The `msg_id` the application gave the request.
    id: String,
}

/// The sync requests this hub's applications wait on.
#[derive(Default)]
struct Requests {
    /// By the id the request left this hub with.
    by_wire: HashMap<String, Waiting>,
    /// (connection, the application's id): the requests in each connection's own scope.
    by_app: HashSet<(u64, String)>,
}

impl Requests {
    fn take(&mut self, wire: &str) -> Option<Waiting> {
        let waiting = self.by_wire.remove(wire)?;
        self.by_app
            .remove(&(waiting.app.shared.id, waiting.id.clone()));
        Some(waiting)
    }
}

/// The applications of one hub.
pub struct Local {
    subscriptions: Mutex<Vec<Subscription>>,
    pending: Mutex<Requests>,
    next_id: AtomicU64,
    unroutable: AtomicU64,
    undelivered: AtomicU64,
    /// How long a sync request waits for its answer.
    pub request_timeout: Duration,
}

/// The outcome of [`Local::deliver`].
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Given to this many applications (a response: to the one that asked).
    Delivered(usize),
    /// No application took it; counted.
    Dropped,
    /// No application took this sync request: send this error back to where it came from.
    Refused(Message),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Local {
    /// No applications yet.
    pub fn new(request_timeout: Duration) -> Local {
        Local {
            subscriptions: Mutex::new(Vec::new()),
            pending: Mutex::new(Requests::default()),
            next_id: AtomicU64::new(1),
            unroutable: AtomicU64::new(0),
            undelivered: AtomicU64::new(0),
            request_timeout,
        }
    }

    /// Adds a subscription; returns its id for [`unsubscribe`](Self::unsubscribe).
    pub fn subscribe(&self, filter: Filter, app: AppSender) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.subscriptions).push(Subscription { id, filter, app });
        id
    }

    /// Removes a subscription.
    pub fn unsubscribe(&self, id: u64) {
        lock(&self.subscriptions).retain(|s| s.id != id);
    }

    /// Records that `app` waits for the answer to its request `about` (`about.id` is the id the
    /// application chose); returns the id the request must leave this hub with (made by the hub,
    /// unique per request). The answer to that id goes to `app` alone, with `parent_msg_id` set
    /// back to `about.id`; after the request timeout `app` gets an `error` notice instead.
    ///
    /// Errors (nothing recorded): `app` already waits on a request with the same id (ids are
    /// scoped to a connection, so only its own requests count).
    pub fn await_response(
        self: &Arc<Self>,
        about: &Message,
        app: AppSender,
    ) -> Result<String, String> {
        let wire = crate::message::new_id();
        {
            let mut pending = lock(&self.pending);
            if !pending.by_app.insert((app.shared.id, about.id.clone())) {
                return Err(format!(
                    "request {:?} is still waiting for its answer on this connection; give each request its own msg_id",
                    about.id
                ));
            }
            pending.by_wire.insert(
                wire.clone(),
                Waiting {
                    app,
                    id: about.id.clone(),
                },
            );
        }
        let local = Arc::downgrade(self);
        let about = Message {
            content: Vec::new(),
            ..about.clone()
        };
        let timeout = self.request_timeout;
        let key = wire.clone();
        smol::spawn(async move {
            smol::Timer::after(timeout).await;
            let Some(local) = local.upgrade() else { return };
            let waiting = lock(&local.pending).take(&key);
            if let Some(w) = waiting {
                let why = format!("no response within {:.1}s", timeout.as_secs_f64());
                let notice = Message::notice(&about, "error", Some(&why)).to_json();
                local.hand_over(&w.app, notice, "the timeout of its request");
            }
        })
        .detach();
        Ok(wire)
    }

    /// Forgets the request that left this hub as `wire` (it was refused before it was sent).
    pub fn cancel(&self, wire: &str) {
        lock(&self.pending).take(wire);
    }

    /// Forgets the requests `app` was waiting on (it disconnected).
    pub fn forget(&self, app: &AppSender) {
        let mut pending = lock(&self.pending);
        pending.by_wire.retain(|_, w| !w.app.same_app(app));
        pending.by_app.retain(|(id, _)| *id != app.shared.id);
    }

    /// Queues `text` for `app`, which must have it (a response, a timeout): an application that
    /// has no room for it is cut off, and the loss is logged and counted.
    fn hand_over(&self, app: &AppSender, text: String, what: &str) -> bool {
        match app.try_send(text) {
            Ok(()) => true,
            Err(AppSendError::Full { messages, bytes }) => {
                self.undelivered.fetch_add(1, Ordering::Relaxed);
                self.cut_off_slow(app, messages, bytes);
                false
            }
            Err(AppSendError::Closed) => {
                self.undelivered.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "application {} left before {what} could be handed to it; dropped",
                    app.name()
                );
                false
            }
        }
    }

    /// Disconnects `app`, whose queue holds `messages` messages and `bytes` bytes, as too slow.
    fn cut_off_slow(&self, app: &AppSender, messages: usize, bytes: usize) {
        let why = format!(
            "too slow: {bytes} bytes in {messages} messages waiting; the next passes the {}-byte bound",
            app.max_bytes()
        );
        if app.cut_off(why.clone()) {
            log::warn!(
                "application {} is {why}; disconnecting it, the message that did not fit and those waiting are dropped",
                app.name()
            );
        }
    }

    /// Hands a message from the other side to the applications it is for.
    pub fn deliver(&self, msg: &Message) -> Delivery {
        if !msg.parent_id.is_empty() {
            let waiting = lock(&self.pending).take(&msg.parent_id);
            if let Some(w) = waiting {
                // The requester sees its own id as the parent, not the one the hub sent.
                let answer = msg.to_json_answering(&w.id);
                return if self.hand_over(&w.app, answer, "the answer to its request") {
                    Delivery::Delivered(1)
                } else {
                    Delivery::Dropped
                };
            }
        }
        let mut json = None;
        let (mut matched, mut delivered) = (0, 0);
        let mut slow = Vec::new();
        for sub in lock(&self.subscriptions).iter() {
            if !sub.filter.matches(msg) {
                continue;
            }
            matched += 1;
            let text = json.get_or_insert_with(|| msg.to_json()).clone();
            match sub.app.try_send(text) {
                Ok(()) => delivered += 1,
                Err(AppSendError::Full { messages, bytes }) => {
                    self.undelivered.fetch_add(1, Ordering::Relaxed);
                    // An application that cannot keep up is disconnected rather than allowed to
                    // hold the link back or grow this hub's memory.
                    self.cut_off_slow(&sub.app, messages, bytes);
                    slow.push(sub.id);
                }
                Err(AppSendError::Closed) => {
                    // It is leaving; its subscription goes with it.
                    self.undelivered.fetch_add(1, Ordering::Relaxed);
                    slow.push(sub.id);
                }
            }
        }
        if !slow.is_empty() {
            lock(&self.subscriptions).retain(|s| !slow.contains(&s.id));
        }
        if delivered > 0 {
            return Delivery::Delivered(delivered);
        }
        if matched > 0 {
            // Its subscribers were cut off as too slow just now (logged and counted above).
            if msg.sync {
                let why = format!(
                    "the application subscribed to {} was disconnected as too slow",
                    msg.resource
                );
                return Delivery::Refused(Message::notice(msg, "error", Some(&why)));
            }
            return Delivery::Dropped;
        }
        let n = self.unroutable.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 || n.is_power_of_two() {
            log::info!(
                "no application subscribed to group {:?} resource {:?} ({n} such message(s) so far)",
                msg.group,
                msg.resource
            );
        }
        if msg.sync {
            let why = format!("no application subscribed to {}", msg.resource);
            return Delivery::Refused(Message::notice(msg, "error", Some(&why)));
        }
        Delivery::Dropped
    }

    /// Messages no application took so far.
    pub fn unroutable(&self) -> u64 {
        self.unroutable.load(Ordering::Relaxed)
    }

    /// Messages an application should have had but did not get so far: it was cut off as too
    /// slow, or left before its answer or timeout arrived.
    pub fn undelivered(&self) -> u64 {
        self.undelivered.load(Ordering::Relaxed)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn msg(group: &str, resource: &str) -> Message {
        Message {
            id: crate::message::new_id(),
            group: group.into(),
            resource: resource.into(),
            content: b"1".to_vec(),
            ..Message::default()
        }
    }

    fn app(name: &str) -> (AppSender, AppReceiver) {
        app_channel(name, 16, 1 << 20)
    }

    fn texts(rx: &AppReceiver) -> Vec<Message> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|t| Message::from_json(&t).unwrap())
            .collect()
    }

    #[test]
    fn filters_route_and_responses_go_to_the_asker_only() {
        let local = Arc::new(Local::new(Duration::from_secs(30)));
        let (a, a_rx) = app("a");
        let (b, b_rx) = app("b");
        local.subscribe(
            Filter {
                group: Some("g".into()),
                resource: Some("node/n1/".into()),
            },
            a.clone(),
        );
        let sub_b = local.subscribe(Filter::default(), b.clone());

        assert_eq!(
            local.deliver(&msg("g", "node/n1/x")),
            Delivery::Delivered(2)
        );
        assert_eq!(
            local.deliver(&msg("h", "node/n1/x")),
            Delivery::Delivered(1)
        );
        assert_eq!((texts(&a_rx).len(), texts(&b_rx).len()), (1, 2));

        let request = msg("g", "node/n1/q");
        let wire = local.await_response(&request, a.clone()).unwrap();
        assert_ne!(wire, request.id, "the request leaves under the hub's id");
        let mut response = msg("g", "node/n1/q");
        response.parent_id = wire;
        assert_eq!(local.deliver(&response), Delivery::Delivered(1));
        let got = texts(&a_rx);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].parent_id, request.id, "the asker sees its own id");
        assert!(texts(&b_rx).is_empty(), "only the asker gets the response");

        local.unsubscribe(sub_b);
        let mut lonely = msg("h", "other");
        assert_eq!(local.deliver(&lonely), Delivery::Dropped);
        lonely.sync = true;
        match local.deliver(&lonely) {
            Delivery::Refused(err) => {
                assert_eq!(
                    (err.parent_id.as_str(), err.operation.as_str()),
                    (lonely.id.as_str(), "error")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(local.unroutable(), 2);
    }

    #[test]
    fn requests_with_the_same_id_from_two_applications_each_get_their_own_answer() {
        let local = Arc::new(Local::new(Duration::from_secs(30)));
        let (a, a_rx) = app("a");
        let (b, b_rx) = app("b");
        let mut question = msg("g", "node/n1/q");
        question.id = "req-1".into();
        let wire_a = local.await_response(&question, a.clone()).unwrap();
        let wire_b = local.await_response(&question, b.clone()).unwrap();
        assert_ne!(
            wire_a, wire_b,
            "the responder can tell the two questions apart"
        );

        for (wire, content) in [(&wire_b, "for b"), (&wire_a, "for a")] {
            let mut answer = msg("g", "node/n1/q");
            answer.parent_id = wire.clone();
            answer.content = format!("{content:?}").into_bytes();
            assert_eq!(local.deliver(&answer), Delivery::Delivered(1));
        }
        let (got_a, got_b) = (texts(&a_rx), texts(&b_rx));
        assert_eq!(got_a.len(), 1);
        assert_eq!(got_b.len(), 1);
        assert_eq!(
            (got_a[0].parent_id.as_str(), &got_a[0].content[..]),
            ("req-1", &b"\"for a\""[..])
        );
        assert_eq!(
            (got_b[0].parent_id.as_str(), &got_b[0].content[..]),
            ("req-1", &b"\"for b\""[..])
        );
    }

    #[test]
    fn a_connection_cannot_wait_twice_on_one_id() {
        let local = Arc::new(Local::new(Duration::from_secs(30)));
        let (a, _a_rx) = app("a");
        let mut question = msg("g", "q");
        question.id = "req-1".into();
        let wire = local.await_response(&question, a.clone()).unwrap();
        let err = local.await_response(&question, a.clone()).unwrap_err();
        assert!(err.contains("still waiting"), "{err}");
        // Once the first is answered (or refused), the id is free again on that connection.
        local.cancel(&wire);
        local.await_response(&question, a).unwrap();
    }

    #[test]
    fn unanswered_requests_time_out_with_an_error() {
        let local = Arc::new(Local::new(Duration::from_millis(50)));
        let (a, a_rx) = app("a");
        let request = msg("g", "r");
        local.await_response(&request, a).unwrap();
        let text = smol::block_on(a_rx.recv()).unwrap();
        let notice = Message::from_json(&text).unwrap();
        assert_eq!(
            (notice.parent_id, notice.operation),
            (request.id, "error".to_owned())
        );
        assert!(
            String::from_utf8(notice.content)
                .unwrap()
                .contains("no response within")
        );
    }

    #[test]
    fn a_sender_waiting_for_room_is_released_when_the_writer_fails() {
        let (a, a_rx) = app_channel("a", 1, 1 << 20);
        smol::block_on(a.send("first".into())).unwrap();
        let waiting = smol::spawn({
            let a = a.clone();
            async move { a.send("second".into()).await }
        });
        // The connection fails: its writer takes nothing more, ever.
        a_rx.close();
        let outcome = smol::block_on(crate::transport::timeout(Duration::from_secs(5), waiting));
        assert_eq!(outcome, Some(Err(AppSendError::Closed)));
    }

    #[test]
    fn a_slow_application_is_cut_off_by_messages() {
        let local = Local::new(Duration::from_secs(1));
        let (a, a_rx) = app_channel("a", 2, 1 << 20);
        local.subscribe(Filter::default(), a);
        for _ in 0..2 {
            assert_eq!(local.deliver(&msg("g", "r")), Delivery::Delivered(1));
        }
        assert_eq!(local.deliver(&msg("g", "r")), Delivery::Dropped);
        assert!(a_rx.cut_reason().unwrap().contains("too slow"));
        assert_eq!(a_rx.try_recv(), None, "nothing more is written to it");
        assert_eq!(local.undelivered(), 1);
        assert_eq!(local.unroutable(), 0, "it was subscribed: not unroutable");
    }

    #[test]
    fn a_slow_application_is_cut_off_by_bytes_before_they_are_queued() {
        let local = Local::new(Duration::from_secs(1));
        let (a, a_rx) = app_channel("a", 65536, 4096);
        local.subscribe(Filter::default(), a);
        let mut big = msg("g", "r");
        big.content = format!("{:?}", "x".repeat(1500)).into_bytes();
        let size = big.to_json().len();
        assert_eq!(local.deliver(&big), Delivery::Delivered(1));
        assert_eq!(local.deliver(&big), Delivery::Delivered(1));
        assert_eq!(
            local.deliver(&big),
            Delivery::Dropped,
            "a third would pass 4096 bytes"
        );
        let why = a_rx.cut_reason().unwrap();
        assert!(
            why.contains(&format!("{} bytes in 2 messages", 2 * size)),
            "{why}"
        );
        assert_eq!(a_rx.discard(), (2, 2 * size));

        // An empty queue takes one message whatever its size, so the bound never refuses one.
        let (b, b_rx) = app_channel("b", 16, 100);
        assert_eq!(b.try_send("x".repeat(1000)), Ok(()));
        assert!(matches!(
            b.try_send("y".into()),
            Err(AppSendError::Full { .. })
        ));
        assert_eq!(b_rx.try_recv().map(|t| t.len()), Some(1000));
        assert_eq!(b.try_send("y".into()), Ok(()), "room again once written");
    }
}
