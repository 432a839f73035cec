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

use crate::message::{Message, MessageView};

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

    /// [`matches`](Self::matches) for a message read in place.
    pub fn matches_view(&self, msg: &MessageView<'_>) -> bool {
        self.group.as_ref().is_none_or(|g| g == msg.group)
            && self
                .resource
                .as_ref()
                .is_none_or(|p| msg.resource_starts_with(p))
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
    /// Notified when the writer took something (room for a waiting [`AppSender::send`]), and
    /// when the queue closes.
    room: event_listener::Event,
    /// Why the application was cut off, once it was.
    cut: Mutex<Option<String>>,
    /// Closed when the application is cut off; nothing is ever sent on it.
    cut_flag: std::sync::atomic::AtomicBool,
    cut_event: event_listener::Event,
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
        self.room.notify(1);
    }

    fn cut_reason(&self) -> Option<String> {
        lock(&self.cut).clone()
    }

    async fn cut_off_wait(&self) {
        loop {
            if self.cut_flag.load(Ordering::Acquire) {
                return;
            }
            let listener = self.cut_event.listen();
            if self.cut_flag.load(Ordering::Acquire) {
                return;
            }
            listener.await;
        }
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

/// One delivery to an application: a message, and how this application gets it.
#[derive(Debug, Clone)]
pub struct Out {
    /// The message (shared by every application it goes to).
    pub msg: Arc<Message>,
    /// The QoS it is delivered at, for MQTT: the lower of the message's and the highest its
    /// matching subscriptions were granted (MQTT 5.0 section 3.8.4). The WebSocket API ignores it.
    pub qos: u8,
    /// For MQTT: the RETAIN flag the subscriber sees (a retained message sent because of a new
    /// subscription, or Retain As Published; MQTT 5.0 section 3.3.1.3).
    pub retain: bool,
    /// MQTT 5.0 Subscription Identifiers of the matching subscriptions (section 3.8.2.1.2).
    pub sub_ids: Vec<u32>,
    /// The answer to, or the timeout of, a sync request of this application, rather than a
    /// delivery to one of its subscriptions.
    pub answer: bool,
    /// From a durable session's queue: the record's sequence number there, acknowledged once the
    /// application has the message.
    pub seq: Option<u64>,
    /// The JSON text to write instead of `msg`'s, already made (a notice of the hub: see
    /// [`Out::notice`]).
    pub json: Option<String>,
}

impl Out {
    /// A message for an application, as it is (a notice, a WebSocket delivery).
    pub fn message(msg: Message) -> Out {
        Out::shared(Arc::new(msg), 1)
    }

    /// A delivery of `msg` at `qos`.
    pub fn shared(msg: Arc<Message>, qos: u8) -> Out {
        Out {
            msg,
            qos,
            retain: false,
            sub_ids: Vec::new(),
            answer: false,
            seq: None,
            json: None,
        }
    }

    /// A notice of the hub to the application, as its JSON text
    /// ([`Message::notice_json`](crate::message::Message::notice_json)); `msg` is an empty
    /// message shared by every notice.
    pub fn notice(json: String) -> Out {
        Out::text(json, 1)
    }

    /// A delivery to an application of the WebSocket API as its JSON text, made at once (a
    /// notice, a message from the link read in place); `msg` is an empty message shared by
    /// every such delivery.
    pub fn text(json: String, qos: u8) -> Out {
        static EMPTY: std::sync::OnceLock<Arc<Message>> = std::sync::OnceLock::new();
        Out {
            json: Some(json),
            ..Out::shared(EMPTY.get_or_init(Arc::default).clone(), qos)
        }
    }

    /// The JSON text an application of the WebSocket API receives.
    pub fn to_json(&self) -> String {
        match &self.json {
            Some(json) => json.clone(),
            None => self.msg.to_json(),
        }
    }

    /// [`to_json`](Self::to_json), taking the text out of a notice rather than copying it.
    pub fn into_json(self) -> String {
        match self.json {
            Some(json) => json,
            None => self.msg.to_json(),
        }
    }

    /// What it counts for in the bounds of a delivery queue: its content and resource, plus 128
    /// bytes for the rest (about its JSON's names and header); a delivery made as JSON text
    /// ([`Out::text`]), that text's length.
    pub fn weight(&self) -> usize {
        match &self.json {
            Some(json) => json.len(),
            None => self.msg.content.len() + self.msg.resource.len() + 128,
        }
    }
}

/// The hub's end of one application's delivery queue: its deliveries, in order.
#[derive(Clone)]
pub struct AppSender {
    /// Each delivery boxed: the unbounded channel's blocks of 31 slots then stay under a
    /// kilobyte, which glibc's malloc serves without first merging every small chunk freed
    /// since (what a block of 31 whole deliveries cost, per block, on both hubs).
    tx: Sender<Box<Out>>,
    shared: Arc<AppShared>,
}

/// The connection's end of its delivery queue, read by its writer.
pub struct AppReceiver {
    rx: Receiver<Box<Out>>,
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
    let shared = Arc::new(AppShared {
        id: NEXT.fetch_add(1, Ordering::Relaxed),
        name: name.into(),
        messages: AtomicUsize::new(0),
        max_messages: max_messages.max(1),
        bytes: AtomicUsize::new(0),
        max_bytes,
        room: event_listener::Event::new(),
        cut: Mutex::new(None),
        cut_flag: std::sync::atomic::AtomicBool::new(false),
        cut_event: event_listener::Event::new(),
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
    /// Queues `out` if it fits under both bounds, without waiting.
    pub fn try_send(&self, text: Out) -> Result<(), AppSendError> {
        if self.tx.is_closed() {
            return Err(AppSendError::Closed);
        }
        let len = text.weight();
        if !self.shared.reserve(len) {
            return Err(self.full());
        }
        match self.tx.try_send(Box::new(text)) {
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
    pub async fn send(&self, text: Out) -> Result<(), AppSendError> {
        let len = text.weight();
        // Cutting off and closing both close the channel and notify `room`.
        while !self.shared.reserve(len) {
            if self.tx.is_closed() {
                return Err(AppSendError::Closed);
            }
            let listener = self.shared.room.listen();
            if self.shared.reserve(len) {
                break;
            }
            if self.tx.is_closed() {
                return Err(AppSendError::Closed);
            }
            listener.await;
        }
        match self.tx.send(Box::new(text)).await {
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
        self.shared.cut_flag.store(true, Ordering::Release);
        self.shared.cut_event.notify(usize::MAX);
        self.shared.room.notify(usize::MAX);
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

    /// Unique among the application connections of this process.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The largest number of bytes queued before the application counts as too slow.
    pub fn max_bytes(&self) -> usize {
        self.shared.max_bytes
    }
}

impl AppReceiver {
    fn took(&self, text: Option<Box<Out>>) -> Option<Out> {
        let text = *text?;
        self.shared.release(text.weight());
        // Closed by `cut_off`, after it recorded why: no lock per message.
        if self.shared.cut_flag.load(Ordering::Acquire) {
            return None;
        }
        Some(text)
    }

    /// The next text for the application; `None` once it is cut off, or once every sender is
    /// gone and nothing is left.
    pub async fn recv(&self) -> Option<Out> {
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
        self.shared.room.notify(usize::MAX);
    }

    /// The next text if one is waiting; `None` as for [`recv`](Self::recv) or when none is.
    pub fn try_recv(&self) -> Option<Out> {
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
            bytes += text.weight();
            self.shared.release(text.weight());
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

/// Where a durable subscription keeps what it is given while its application may be away: a
/// persistent MQTT session's or a named WebSocket subscription's queue on disk
/// (`crate::sessions`).
pub trait Keep: Send + Sync {
    /// Writes `out` into the queue (before the link acknowledges the message, so a crash of the
    /// hub after the acknowledgement cannot lose it); `false` when it could not (the queue is
    /// full: the keeper logs and counts that).
    fn keep(&self, out: &Out) -> bool;
    /// Makes what was kept durable as the fsync policy defines it.
    fn sync(&self);
}

/// Who gets what a subscription selects.
#[derive(Clone)]
pub enum Sink {
    /// An application connected now.
    App(AppSender),
    /// A durable subscription's queue.
    Durable(Arc<dyn Keep>),
}

/// One MQTT subscription of a session (MQTT 5.0 section 3.8.3).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicSub {
    /// The topic filter (`+` and `#` wildcards, MQTT 5.0 section 4.7).
    pub filter: String,
    /// The maximum QoS granted.
    pub qos: u8,
    /// No Local: not the session's own publishes.
    #[serde(default)]
    pub no_local: bool,
    /// Retain As Published: the RETAIN flag is forwarded as it was published.
    #[serde(default)]
    pub retain_as_published: bool,
    /// The Subscription Identifier, if the client gave one.
    #[serde(default)]
    pub id: Option<u32>,
}

/// The subscriptions of one MQTT session, changed by its SUBSCRIBE and UNSUBSCRIBE packets while
/// it stays registered as one subscriber.
#[derive(Debug, Default)]
pub struct TopicSet {
    subs: Mutex<Vec<TopicSub>>,
    /// The connection whose publishes count as the session's own (No Local).
    owner: AtomicU64,
}

impl TopicSet {
    /// A set holding `subs`.
    pub fn new(subs: Vec<TopicSub>) -> TopicSet {
        TopicSet {
            subs: Mutex::new(subs),
            owner: AtomicU64::new(0),
        }
    }

    /// Adds `sub`, replacing one with the same filter (MQTT 5.0 section 3.8.4); returns whether
    /// the filter is new.
    pub fn add(&self, sub: TopicSub) -> bool {
        let mut subs = lock(&self.subs);
        match subs.iter_mut().find(|s| s.filter == sub.filter) {
            Some(s) => {
                *s = sub;
                false
            }
            None => {
                subs.push(sub);
                true
            }
        }
    }

    /// [`add`](Self::add), unless `sub`'s filter is new and the set holds `max` already:
    /// `None` then, and nothing changes.
    pub fn add_within(&self, sub: TopicSub, max: usize) -> Option<bool> {
        let mut subs = lock(&self.subs);
        if let Some(s) = subs.iter_mut().find(|s| s.filter == sub.filter) {
            *s = sub;
            return Some(false);
        }
        if subs.len() >= max {
            return None;
        }
        subs.push(sub);
        Some(true)
    }

    /// Removes the subscription to `filter`; returns whether there was one.
    pub fn remove(&self, filter: &str) -> bool {
        let mut subs = lock(&self.subs);
        let before = subs.len();
        subs.retain(|s| s.filter != filter);
        subs.len() != before
    }

    /// The subscriptions, as they are now.
    pub fn list(&self) -> Vec<TopicSub> {
        lock(&self.subs).clone()
    }

    /// Sets the connection whose publishes are the session's own.
    pub fn set_owner(&self, app: u64) {
        self.owner.store(app, Ordering::Relaxed);
    }

    /// How the session gets `msg` (published by connection `from`, if local): `None` when no
    /// subscription matches, else the delivery (QoS, RETAIN flag, identifiers).
    fn select(&self, msg: &Arc<Message>, from: Option<u64>) -> Option<Out> {
        let own = from.is_some_and(|f| f == self.owner.load(Ordering::Relaxed));
        let mut out: Option<Out> = None;
        for sub in lock(&self.subs).iter() {
            if (own && sub.no_local) || !crate::mqtt::topic::matches(&sub.filter, &msg.resource) {
                continue;
            }
            let o = out.get_or_insert_with(|| Out::shared(msg.clone(), 0));
            o.qos = o.qos.max(sub.qos.min(msg.qos));
            o.retain |= sub.retain_as_published && msg.retain;
            if let Some(id) = sub.id {
                o.sub_ids.push(id);
            }
        }
        out
    }
}

/// What a subscription selects.
#[derive(Clone)]
pub enum Selector {
    /// The WebSocket API's: group equal, resource starting with a prefix.
    Prefix(Filter),
    /// An MQTT session's topic filters.
    Topics(Arc<TopicSet>),
}

impl Selector {
    fn select(&self, msg: &Arc<Message>, from: Option<u64>) -> Option<Out> {
        match self {
            Selector::Prefix(f) => f.matches(msg).then(|| Out::shared(msg.clone(), msg.qos)),
            Selector::Topics(set) => set.select(msg, from),
        }
    }
}

struct Subscription {
    id: u64,
    selector: Selector,
    sink: Sink,
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

/// A message being routed: owned, or read in place from a link's frame and owned only once
/// something must keep it ([`Routed::shared`]).
enum Routed<'a> {
    Owned(Arc<Message>),
    View(MessageView<'a>, Option<Arc<Message>>),
}

impl Routed<'_> {
    /// The owned message, made once.
    fn shared(&mut self) -> &Arc<Message> {
        match self {
            Routed::Owned(msg) => msg,
            Routed::View(view, owned) => owned.get_or_insert_with(|| Arc::new(view.to_owned())),
        }
    }
}

/// The applications of one hub.
pub struct Local {
    subscriptions: Mutex<Vec<Subscription>>,
    pending: Mutex<Requests>,
    next_id: AtomicU64,
    unroutable: AtomicU64,
    undelivered: AtomicU64,
    /// Set when a durable session was given a message since [`wrote_durable`] last looked.
    ///
    /// [`wrote_durable`]: Self::wrote_durable
    durable_written: std::sync::atomic::AtomicBool,
    /// Set when a durable session was given a message since [`sync_durable`] last synced.
    ///
    /// [`sync_durable`]: Self::sync_durable
    durable_unsynced: std::sync::atomic::AtomicBool,
    /// How long a sync request waits for its answer.
    pub request_timeout: Duration,
    /// The retained messages (MQTT), by topic.
    pub retained: Arc<crate::retained::Retained>,
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

/// Whether `msg` expired (its MQTT Message Expiry Interval passed) at `now_ms`.
pub fn expired(msg: &Message, now_ms: i64) -> bool {
    msg.extra
        .as_ref()
        .is_some_and(|e| e.expires_at != 0 && e.expires_at <= now_ms)
}

impl Local {
    /// No applications yet; retained messages kept in memory only.
    pub fn new(request_timeout: Duration) -> Local {
        Local::with_retained(
            request_timeout,
            Arc::new(crate::retained::Retained::in_memory()),
        )
    }

    /// No applications yet; retained messages in `retained`.
    pub fn with_retained(
        request_timeout: Duration,
        retained: Arc<crate::retained::Retained>,
    ) -> Local {
        Local {
            subscriptions: Mutex::new(Vec::new()),
            pending: Mutex::new(Requests::default()),
            next_id: AtomicU64::new(1),
            unroutable: AtomicU64::new(0),
            undelivered: AtomicU64::new(0),
            durable_written: std::sync::atomic::AtomicBool::new(false),
            durable_unsynced: std::sync::atomic::AtomicBool::new(false),
            request_timeout,
            retained,
        }
    }

    /// Adds a WebSocket API subscription; returns its id for [`unsubscribe`](Self::unsubscribe).
    pub fn subscribe(&self, filter: Filter, app: AppSender) -> u64 {
        self.add(Selector::Prefix(filter), Sink::App(app))
    }

    /// Adds a subscription of any kind; returns its id for [`unsubscribe`](Self::unsubscribe).
    pub fn add(&self, selector: Selector, sink: Sink) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.subscriptions).push(Subscription { id, selector, sink });
        id
    }

    /// Removes a subscription.
    pub fn unsubscribe(&self, id: u64) {
        lock(&self.subscriptions).retain(|s| s.id != id);
    }

    /// Points subscription `id` at `sink` (a durable session's application came or went).
    pub fn redirect(&self, id: u64, sink: Sink) {
        if let Some(s) = lock(&self.subscriptions).iter_mut().find(|s| s.id == id) {
            s.sink = sink;
        }
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
                let mut notice = Out::message(Message::notice(&about, "error", Some(&why)));
                notice.answer = true;
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

    /// Queues `out` for `app`, which must have it (a response, a timeout): an application that
    /// has no room for it is cut off, and the loss is logged and counted.
    fn hand_over(&self, app: &AppSender, out: Out, what: &str) -> bool {
        match app.try_send(out) {
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

    /// Gives `msg` to every subscription it matches (not to connection `from`'s own subscriptions
    /// that asked for No Local); returns how many matched and how many took it.
    fn fan_out(&self, msg: &mut Routed<'_>, from: Option<u64>) -> (usize, usize) {
        let (mut matched, mut delivered) = (0, 0);
        let mut slow = Vec::new();
        for sub in lock(&self.subscriptions).iter() {
            let out = match (&sub.selector, &*msg) {
                (Selector::Prefix(f), Routed::View(v, _)) => {
                    if !f.matches_view(v) {
                        continue;
                    }
                    let qos = v.qos();
                    match &sub.sink {
                        // A WebSocket application's JSON, written from the frame's bytes.
                        Sink::App(_) => Out::text(v.to_json(), qos),
                        Sink::Durable(_) => Out::shared(msg.shared().clone(), qos),
                    }
                }
                _ => match sub.selector.select(msg.shared(), from) {
                    Some(out) => out,
                    None => continue,
                },
            };
            matched += 1;
            let app = match &sub.sink {
                Sink::Durable(keep) => {
                    if keep.keep(&out) {
                        self.durable_written.store(true, Ordering::Release);
                        self.durable_unsynced.store(true, Ordering::Release);
                        delivered += 1;
                    } else {
                        self.undelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                Sink::App(app) => app,
            };
            match app.try_send(out) {
                Ok(()) => delivered += 1,
                Err(AppSendError::Full { messages, bytes }) => {
                    self.undelivered.fetch_add(1, Ordering::Relaxed);
                    // An application that cannot keep up is disconnected rather than allowed to
                    // hold the link back or grow this hub's memory.
                    self.cut_off_slow(app, messages, bytes);
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
        (matched, delivered)
    }

    /// Hands a message published on this hub over MQTT (by connection `from`) to this hub's own
    /// subscribers, as a broker does; it goes to the other hub as well, through the queue.
    /// Keeps it if it is retained.
    pub fn publish_local(&self, msg: &Arc<Message>, from: u64) -> usize {
        if msg.retain {
            self.retained.update(msg);
        }
        self.fan_out(&mut Routed::Owned(msg.clone()), Some(from)).1
    }

    /// Whether a durable session was given a message since the last call: the link must then
    /// record at once that it received the message, or a restart of the hub before its next
    /// acknowledgement would have the peer send it again and the session keep it twice.
    pub fn wrote_durable(&self) -> bool {
        self.durable_written.swap(false, Ordering::AcqRel)
    }

    /// Makes what durable subscriptions were given durable (before the link acknowledges it).
    pub fn sync_durable(&self) {
        // Most links carry nothing for durable sessions: nothing to look through then.
        if !self.durable_unsynced.swap(false, Ordering::AcqRel) {
            return;
        }
        let keepers: Vec<Arc<dyn Keep>> = lock(&self.subscriptions)
            .iter()
            .filter_map(|s| match &s.sink {
                Sink::Durable(k) => Some(k.clone()),
                Sink::App(_) => None,
            })
            .collect();
        for k in keepers {
            k.sync();
        }
    }

    /// Hands a message from the other side to the applications it is for.
    pub fn deliver(&self, msg: Message) -> Delivery {
        if !msg.parent_id.is_empty() {
            let waiting = lock(&self.pending).take(&msg.parent_id);
            if let Some(w) = waiting {
                // The requester sees its own id as the parent, not the one the hub sent.
                let mut answer = Out::message(Message {
                    parent_id: w.id,
                    ..msg
                });
                answer.answer = true;
                return if self.hand_over(&w.app, answer, "the answer to its request") {
                    Delivery::Delivered(1)
                } else {
                    Delivery::Dropped
                };
            }
        }
        if expired(&msg, crate::message::now_millis()) {
            return Delivery::Dropped;
        }
        let msg = Arc::new(msg);
        if msg.retain {
            self.retained.update(&msg);
        }
        self.route(Routed::Owned(msg))
    }

    /// [`deliver`](Self::deliver) for a message read in place from a link's frame: it is owned
    /// only where something keeps it (a pending request's answer, a retained message, a
    /// durable session's queue, an MQTT subscriber) and written straight from the frame as a
    /// WebSocket application's JSON otherwise.
    pub fn deliver_view(&self, msg: MessageView<'_>) -> Delivery {
        if !msg.parent_id.is_empty() || msg.retain() || msg.has_extra() {
            return self.deliver(msg.to_owned());
        }
        self.route(Routed::View(msg, None))
    }

    /// Gives `msg` to the subscriptions it matches; what becomes of a message none took.
    fn route(&self, mut msg: Routed<'_>) -> Delivery {
        let (matched, delivered) = self.fan_out(&mut msg, None);
        if delivered > 0 {
            return Delivery::Delivered(delivered);
        }
        let msg = msg.shared();
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
        crate::metrics::METRICS.no_subscriber.inc();
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
            .map(|t| (*t.msg).clone())
            .collect()
    }

    /// A delivery weighing `weight` bytes in a queue's bounds.
    fn sized(weight: usize) -> Out {
        Out::message(Message {
            content: vec![b'x'; weight - 128],
            ..Message::default()
        })
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

        assert_eq!(local.deliver(msg("g", "node/n1/x")), Delivery::Delivered(2));
        assert_eq!(local.deliver(msg("h", "node/n1/x")), Delivery::Delivered(1));
        assert_eq!((texts(&a_rx).len(), texts(&b_rx).len()), (1, 2));

        let request = msg("g", "node/n1/q");
        let wire = local.await_response(&request, a.clone()).unwrap();
        assert_ne!(wire, request.id, "the request leaves under the hub's id");
        let mut response = msg("g", "node/n1/q");
        response.parent_id = wire;
        assert_eq!(local.deliver(response.clone()), Delivery::Delivered(1));
        let got = texts(&a_rx);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].parent_id, request.id, "the asker sees its own id");
        assert!(texts(&b_rx).is_empty(), "only the asker gets the response");

        local.unsubscribe(sub_b);
        let mut lonely = msg("h", "other");
        assert_eq!(local.deliver(lonely.clone()), Delivery::Dropped);
        lonely.sync = true;
        match local.deliver(lonely.clone()) {
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

    /// A durable queue in memory.
    #[derive(Default)]
    struct Kept(Mutex<Vec<Message>>);

    impl Keep for Kept {
        fn keep(&self, out: &Out) -> bool {
            lock(&self.0).push((*out.msg).clone());
            true
        }
        fn sync(&self) {}
    }

    #[test]
    fn a_message_from_the_link_is_routed_in_place_and_owned_only_where_kept() {
        let local = Arc::new(Local::new(Duration::from_secs(30)));
        let (ws, ws_rx) = app("ws");
        local.subscribe(
            Filter {
                group: Some("g".into()),
                resource: Some("node/gw-1/dev".into()),
            },
            ws.clone(),
        );
        let (mqtt, mqtt_rx) = app("mqtt");
        let topics = Arc::new(TopicSet::new(vec![TopicSub {
            filter: "node/+/devices/#".into(),
            qos: 1,
            no_local: false,
            retain_as_published: false,
            id: None,
        }]));
        local.add(Selector::Topics(topics), Sink::App(mqtt));
        let kept = Arc::new(Kept::default());
        local.add(
            Selector::Prefix(Filter::default()),
            Sink::Durable(kept.clone()),
        );

        let sent = Message {
            qos: 1,
            ..msg("g", "devices/a")
        };
        let bytes = sent.encode().unwrap();
        let view = MessageView::decode(&bytes, "node/gw-1/").unwrap();
        let owned = view.to_owned();
        assert_eq!(owned.resource, "node/gw-1/devices/a");
        assert_eq!(local.deliver_view(view), Delivery::Delivered(3));
        // The WebSocket application gets the JSON made from the frame, the same text.
        let out = ws_rx.try_recv().unwrap();
        assert_eq!(out.json.as_deref(), Some(owned.to_json().as_str()));
        assert_eq!(out.weight(), owned.to_json().len());
        // The MQTT subscriber and the durable queue get the owned message.
        assert_eq!(*mqtt_rx.try_recv().unwrap().msg, owned);
        assert_eq!(*lock(&kept.0), vec![owned.clone()]);
        assert!(local.wrote_durable());

        // Another group: the durable queue and MQTT only.
        let other = Message {
            group: "h".into(),
            ..sent.clone()
        };
        let bytes = other.encode().unwrap();
        let view = MessageView::decode(&bytes, "node/gw-1/").unwrap();
        assert_eq!(local.deliver_view(view), Delivery::Delivered(2));
        assert!(ws_rx.try_recv().is_none());
        assert_eq!(mqtt_rx.try_recv().unwrap().msg.group, "h");

        // An answer to a pending request goes to the asker alone, its own id restored.
        let request = msg("g", "node/gw-1/q");
        let wire = local.await_response(&request, ws.clone()).unwrap();
        let answer = Message {
            parent_id: wire,
            ..msg("g", "devices/a")
        };
        let bytes = answer.encode().unwrap();
        let view = MessageView::decode(&bytes, "node/gw-1/").unwrap();
        assert_eq!(local.deliver_view(view), Delivery::Delivered(1));
        let out = ws_rx.try_recv().unwrap();
        assert!(out.answer);
        assert_eq!(out.msg.parent_id, request.id);
        assert!(mqtt_rx.try_recv().is_none(), "an answer is not published");

        // A retained message is kept.
        let retained = Message {
            retain: true,
            ..sent
        };
        let bytes = retained.encode().unwrap();
        let view = MessageView::decode(&bytes, "node/gw-1/").unwrap();
        local.deliver_view(view);
        assert_eq!(local.retained.len(), 1);
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
            assert_eq!(local.deliver(answer.clone()), Delivery::Delivered(1));
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
        let notice = (*text.msg).clone();
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
        smol::block_on(a.send(sized(200))).unwrap();
        let waiting = smol::spawn({
            let a = a.clone();
            async move { a.send(sized(200)).await }
        });
        // The connection fails: its writer takes nothing more, ever.
        a_rx.close();
        let outcome = smol::block_on(crate::transport::timeout(Duration::from_secs(5), waiting));
        assert_eq!(outcome, Some(Err(AppSendError::Closed)));
    }

    #[test]
    fn a_topic_set_holds_at_most_its_bound_of_filters_and_still_updates_them() {
        let set = TopicSet::default();
        let sub = |f: &str, qos| TopicSub {
            filter: f.into(),
            qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        };
        assert_eq!(set.add_within(sub("a", 0), 2), Some(true));
        assert_eq!(set.add_within(sub("b", 0), 2), Some(true));
        assert_eq!(set.add_within(sub("c", 0), 2), None, "a third filter");
        assert_eq!(set.add_within(sub("a", 2), 2), Some(false), "an update");
        assert_eq!(set.list().len(), 2);
        assert_eq!(set.list()[0].qos, 2);
    }

    #[test]
    fn a_slow_application_is_cut_off_by_messages() {
        let local = Local::new(Duration::from_secs(1));
        let (a, a_rx) = app_channel("a", 2, 1 << 20);
        local.subscribe(Filter::default(), a);
        for _ in 0..2 {
            assert_eq!(local.deliver(msg("g", "r")), Delivery::Delivered(1));
        }
        assert_eq!(local.deliver(msg("g", "r")), Delivery::Dropped);
        assert!(a_rx.cut_reason().unwrap().contains("too slow"));
        assert!(a_rx.try_recv().is_none(), "nothing more is written to it");
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
        let size = Out::message(big.clone()).weight();
        assert_eq!(local.deliver(big.clone()), Delivery::Delivered(1));
        assert_eq!(local.deliver(big.clone()), Delivery::Delivered(1));
        assert_eq!(
            local.deliver(big.clone()),
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
        assert_eq!(b.try_send(sized(1000)), Ok(()));
        assert!(matches!(
            b.try_send(sized(130)),
            Err(AppSendError::Full { .. })
        ));
        assert_eq!(b_rx.try_recv().map(|t| t.weight()), Some(1000));
        assert_eq!(b.try_send(sized(130)), Ok(()), "room again once written");
    }
}
