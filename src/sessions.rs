//! Durable sessions: what a persistent MQTT session (MQTT 5.0 section 4.1: Clean Start 0 with a
//! Session Expiry Interval, or MQTT 3.1.1's Clean Session 0) or a named WebSocket API
//! subscription (`?session=NAME`) keeps while its application is away: its subscriptions, and a
//! durable queue of what they selected, in order, bounded, on disk.
//!
//! Layout: `{state dir}/sessions/{mqtt|ws}-{escaped name}/` holds `session.json` (the name, the
//! subscriptions, the expiry) and the queue's segments. A delivery is written into the queue
//! before the link acknowledges the message it came with ([`Keep`]), and acknowledged in the
//! queue once the application has it (an MQTT PUBACK or PUBCOMP, a WebSocket write), so a
//! message given to a durable session survives the application's absence and a `kill -9` of
//! the hub.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::QueueConfig;
use crate::local::{AppSender, Filter, Keep, Local, Out, Selector, Sink, TopicSet, TopicSub};

/// Why a connection is cut off when a newer one takes its session (or client identifier) over.
pub const TAKEN_OVER: &str = "another connection took this session over";
use crate::message::Message;
use crate::queue::Queue;

/// How often sessions whose applications are away are checked for expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(5);

/// Which front-end a session belongs to (their names are separate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A persistent MQTT session, named by its client identifier.
    Mqtt,
    /// A named subscription of the WebSocket API.
    Ws,
}

/// What `session.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    kind: Kind,
    name: String,
    /// MQTT: the session's subscriptions.
    #[serde(default)]
    topics: Vec<TopicSub>,
    /// WebSocket API: the subscription's filter.
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    /// Seconds the session outlives its application's connection; `u32::MAX`: forever.
    expiry: u32,
    /// When the application left (ms since the epoch); 0 while it is connected.
    gone_at: i64,
}

/// One durable session.
pub struct Durable {
    dir: PathBuf,
    /// What the session was given and its application has not yet taken.
    pub queue: Arc<Queue>,
    /// MQTT: its subscriptions (registered with local delivery as one subscriber).
    pub topics: Arc<TopicSet>,
    saved: Mutex<Saved>,
    /// Records below this may have been written to a connection already (a re-delivery carries
    /// DUP); after a restart of the hub, everything the queue held then.
    sent_below: AtomicU64,
    subscription: AtomicU64,
    dropped: AtomicU64,
    /// The connection it is attached to (cut off with [`TAKEN_OVER`] when another takes it).
    attached: Mutex<Option<AppSender>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A delivery as a session's queue stores it: `qos u8 | retain u8 | count u8 | count x
/// subscription id u32 | message (binary form)`.
pub fn encode_out(out: &Out) -> Result<Vec<u8>, String> {
    let msg = out.msg.encode().map_err(|e| e.to_string())?;
    let ids = &out.sub_ids[..out.sub_ids.len().min(255)];
    let mut bytes = Vec::with_capacity(3 + 4 * ids.len() + msg.len());
    bytes.push(out.qos);
    bytes.push(u8::from(out.retain));
    bytes.push(ids.len() as u8);
    for id in ids {
        bytes.extend_from_slice(&id.to_be_bytes());
    }
    bytes.extend_from_slice(&msg);
    Ok(bytes)
}

/// Reads what [`encode_out`] wrote; `seq` is the record's position in the queue.
pub fn decode_out(bytes: &[u8], seq: u64) -> Result<Out, String> {
    let head = bytes.get(..3).ok_or("a session record is truncated")?;
    let n = usize::from(head[2]);
    let ids = bytes
        .get(3..3 + 4 * n)
        .ok_or("a session record is truncated")?;
    let msg = Message::decode(&bytes[3 + 4 * n..]).map_err(|e| e.to_string())?;
    Ok(Out {
        msg: Arc::new(msg),
        qos: head[0].min(2),
        retain: head[1] != 0,
        sub_ids: ids
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
            .collect(),
        answer: false,
        seq: Some(seq),
        json: None,
    })
}

impl Keep for Durable {
    fn keep(&self, out: &Out) -> bool {
        let written = encode_out(out).and_then(|b| self.queue.append_now(&b));
        match written {
            Ok(_) => true,
            Err(e) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    log::warn!(
                        "session {:?}: a message for it was dropped: {e} ({n} dropped so far)",
                        lock(&self.saved).name
                    );
                }
                false
            }
        }
    }

    fn sync(&self) {
        if let Err(e) = self.queue.sync() {
            log::error!("cannot sync the queue of {}: {e}", self.dir.display());
        }
    }
}

impl Durable {
    /// The session's name (an MQTT client identifier, a WebSocket subscription's name).
    pub fn name(&self) -> String {
        lock(&self.saved).name.clone()
    }

    /// Records the session's MQTT subscriptions as they are now.
    pub fn save_topics(&self) {
        lock(&self.saved).topics = self.topics.list();
        self.save();
    }

    fn save(&self) {
        let saved = lock(&self.saved).clone();
        let file = self.dir.join("session.json");
        let tmp = self.dir.join("session.json.tmp");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                std::fs::write(&tmp, b)?;
                std::fs::File::open(&tmp)?.sync_data()?;
                std::fs::rename(&tmp, &file)
            });
        if let Err(e) = written {
            log::error!("cannot save {}: {e}", file.display());
        }
    }

    /// Records below this may have reached a connection before (MQTT's DUP on re-delivery).
    pub fn sent_below(&self) -> u64 {
        self.sent_below.load(Ordering::Acquire)
    }

    /// Record `seq` was written to a connection.
    pub fn sent(&self, seq: u64) {
        self.sent_below.fetch_max(seq + 1, Ordering::AcqRel);
    }
}

/// The durable sessions of one hub.
pub struct Sessions {
    dir: PathBuf,
    queue: QueueConfig,
    local: Arc<Local>,
    by_name: Mutex<HashMap<(Kind, String), Arc<Durable>>>,
}

/// The folder name of a session: its kind, then its name with every byte other than ASCII
/// letters, digits, `.`, `_` and `-` written `%XX` (a long name is cut and ends with a hash).
fn folder(kind: Kind, name: &str) -> String {
    let mut out = String::from(match kind {
        Kind::Mqtt => "mqtt-",
        Kind::Ws => "ws-",
    });
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > 200 {
        let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
        out.truncate(120);
        while !out.is_char_boundary(out.len()) {
            out.pop();
        }
        out.push('~');
        for b in &digest.as_ref()[..16] {
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

impl Sessions {
    /// The sessions kept in `dir` (created if missing): each is registered with `local` again,
    /// so deliveries reach it before its application is back; those that expired while the hub
    /// was down are removed. Each session's queue has `queue`'s limits and fsync policy.
    ///
    /// Errors: `dir` cannot be created or read.
    pub fn open(
        dir: &Path,
        queue: QueueConfig,
        local: Arc<Local>,
    ) -> Result<Arc<Sessions>, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let sessions = Arc::new(Sessions {
            dir: dir.to_owned(),
            queue,
            local,
            by_name: Mutex::new(HashMap::new()),
        });
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let now = crate::message::now_millis();
        for entry in entries.flatten() {
            let path = entry.path();
            let saved: Saved = match std::fs::read(path.join("session.json"))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("{}: not a session ({e}); removing it", path.display());
                    let _ = std::fs::remove_dir_all(&path);
                    continue;
                }
            };
            // The hub was down: count the session's absence from now on at the latest.
            let mut saved = saved;
            if saved.gone_at == 0 {
                saved.gone_at = now;
            }
            if expired(&saved, now) {
                log::info!("session {:?} expired; removing it", saved.name);
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            match sessions.load(path.clone(), saved) {
                Ok(d) => {
                    d.save();
                }
                Err(e) => log::error!("{}: {e}; its session is not restored", path.display()),
            }
        }
        let weak = Arc::downgrade(&sessions);
        smol::spawn(expiry_task(weak)).detach();
        Ok(sessions)
    }

    fn load(&self, dir: PathBuf, saved: Saved) -> Result<Arc<Durable>, String> {
        let queue = Queue::open(&dir.join("queue"), &self.queue)
            .map_err(|e| format!("cannot open the session's queue: {e}"))?;
        let topics = Arc::new(TopicSet::new(saved.topics.clone()));
        let selector = match saved.kind {
            Kind::Mqtt => Selector::Topics(topics.clone()),
            Kind::Ws => Selector::Prefix(Filter {
                group: saved.group.clone(),
                resource: saved.resource.clone(),
            }),
        };
        let key = (saved.kind, saved.name.clone());
        let durable = Arc::new(Durable {
            dir,
            sent_below: AtomicU64::new(queue.visible()),
            queue,
            topics,
            saved: Mutex::new(saved),
            subscription: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            attached: Mutex::new(None),
        });
        let id = self
            .local
            .add(selector, Sink::Durable(durable.clone() as Arc<dyn Keep>));
        durable.subscription.store(id, Ordering::Relaxed);
        lock(&self.by_name).insert(key, durable.clone());
        Ok(durable)
    }

    /// Takes the session `name` of `kind` for the connection `conn`: the existing one (its
    /// application was away, or is connected now and is taken over: that connection is cut off
    /// with [`TAKEN_OVER`]) unless `fresh`, else a new one. Returns the session and whether it
    /// existed. A WebSocket session is given `filter`; `expiry` is in seconds (`u32::MAX`
    /// never).
    ///
    /// Errors: its folder or queue cannot be made.
    pub fn attach(
        &self,
        kind: Kind,
        name: &str,
        fresh: bool,
        filter: Option<&Filter>,
        expiry: u32,
        conn: &AppSender,
    ) -> Result<(Arc<Durable>, bool), String> {
        let existing = lock(&self.by_name).get(&(kind, name.to_owned())).cloned();
        let (durable, present) = match existing {
            Some(d) if !fresh => (d, true),
            other => {
                if let Some(old) = other {
                    self.drop_session(&old);
                }
                let dir = self.dir.join(folder(kind, name));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let saved = Saved {
                    kind,
                    name: name.to_owned(),
                    topics: Vec::new(),
                    group: filter.and_then(|f| f.group.clone()),
                    resource: filter.and_then(|f| f.resource.clone()),
                    expiry,
                    gone_at: 0,
                };
                (self.load(dir, saved)?, false)
            }
        };
        if let Some(previous) = lock(&durable.attached).replace(conn.clone()) {
            previous.cut_off(TAKEN_OVER.into());
        }
        {
            let mut saved = lock(&durable.saved);
            saved.gone_at = 0;
            saved.expiry = expiry;
            if kind == Kind::Ws {
                saved.group = filter.and_then(|f| f.group.clone());
                saved.resource = filter.and_then(|f| f.resource.clone());
            }
        }
        if kind == Kind::Ws {
            // The filter is the latest connection's.
            let id = durable.subscription.load(Ordering::Relaxed);
            self.local.unsubscribe(id);
            let id = self.local.add(
                Selector::Prefix(filter.cloned().unwrap_or_default()),
                Sink::Durable(durable.clone() as Arc<dyn Keep>),
            );
            durable.subscription.store(id, Ordering::Relaxed);
        }
        durable.save();
        Ok((durable, present))
    }

    /// The connection `conn` left its session; with `expiry` (seconds) from now, or at once
    /// when it is 0 (MQTT 5.0 section 3.1.2.11.2). A connection that was taken over changes
    /// nothing.
    pub fn detach(&self, durable: &Arc<Durable>, conn: u64, expiry: u32) {
        {
            let mut attached = lock(&durable.attached);
            if attached.as_ref().is_none_or(|c| c.id() != conn) {
                return;
            }
            *attached = None;
        }
        if expiry == 0 {
            self.drop_session(durable);
            return;
        }
        {
            let mut saved = lock(&durable.saved);
            saved.gone_at = crate::message::now_millis();
            saved.expiry = expiry;
        }
        durable.save();
    }

    /// Ends a session: no more deliveries, its folder removed.
    fn drop_session(&self, durable: &Arc<Durable>) {
        self.local
            .unsubscribe(durable.subscription.load(Ordering::Relaxed));
        let key = {
            let saved = lock(&durable.saved);
            (saved.kind, saved.name.clone())
        };
        let mut by_name = lock(&self.by_name);
        if by_name.get(&key).is_some_and(|d| Arc::ptr_eq(d, durable)) {
            by_name.remove(&key);
        }
        drop(by_name);
        if let Err(e) = std::fs::remove_dir_all(&durable.dir) {
            log::warn!("cannot remove {}: {e}", durable.dir.display());
        }
    }

    /// Whether a session `name` of `kind` is kept.
    pub fn contains(&self, kind: Kind, name: &str) -> bool {
        lock(&self.by_name).contains_key(&(kind, name.to_owned()))
    }

    /// How many sessions are kept.
    pub fn len(&self) -> usize {
        lock(&self.by_name).len()
    }

    /// Whether no session is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expired(saved: &Saved, now: i64) -> bool {
    saved.expiry != u32::MAX
        && saved.gone_at != 0
        && now.saturating_sub(saved.gone_at) >= i64::from(saved.expiry) * 1000
}

async fn expiry_task(sessions: Weak<Sessions>) {
    loop {
        smol::Timer::after(EXPIRY_CHECK).await;
        let Some(s) = sessions.upgrade() else { return };
        let now = crate::message::now_millis();
        let gone: Vec<Arc<Durable>> = lock(&s.by_name)
            .values()
            .filter(|d| lock(&d.attached).is_none() && expired(&lock(&d.saved), now))
            .cloned()
            .collect();
        for d in gone {
            log::info!("session {:?} expired; removing it", d.name());
            s.drop_session(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> QueueConfig {
        QueueConfig {
            dir: dir.to_owned(),
            max_messages: 1000,
            max_bytes: 1 << 20,
            fsync: crate::store::Fsync::Always,
            window: 64,
        }
    }

    fn message(topic: &str, n: u8) -> Message {
        Message {
            resource: topic.into(),
            content: vec![n],
            raw: true,
            qos: 1,
            ..Message::default()
        }
    }

    #[test]
    fn a_session_keeps_what_arrives_while_away_across_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sessions_dir = dir.path().join("sessions");
        smol::block_on(async {
            let local = Arc::new(Local::new(Duration::from_secs(1)));
            let sessions =
                Sessions::open(&sessions_dir, config(dir.path()), local.clone()).unwrap();
            let (app, _rx) = crate::local::app_channel("a", 16, 1 << 20);
            let (d, present) = sessions
                .attach(Kind::Mqtt, "dev/1 ü", false, None, u32::MAX, &app)
                .unwrap();
            assert!(!present);
            d.topics.add(TopicSub {
                filter: "t/+".into(),
                qos: 1,
                no_local: false,
                retain_as_published: false,
                id: Some(9),
            });
            d.save_topics();
            sessions.detach(&d, app.id(), u32::MAX);
            for n in 0..3 {
                local.deliver(message("t/a", n));
            }
            local.deliver(message("other", 9));
            local.sync_durable();
        });
        // The hub restarts.
        smol::block_on(async {
            let local = Arc::new(Local::new(Duration::from_secs(1)));
            let sessions =
                Sessions::open(&sessions_dir, config(dir.path()), local.clone()).unwrap();
            local.deliver(message("t/b", 3));
            let (app, _rx) = crate::local::app_channel("b", 16, 1 << 20);
            let (d, present) = sessions
                .attach(Kind::Mqtt, "dev/1 ü", false, None, u32::MAX, &app)
                .unwrap();
            assert!(present, "the session outlived the hub");
            let mut reader = d.queue.reader(d.queue.first()).unwrap();
            let mut batch = Vec::new();
            reader
                .read_limited(d.queue.visible(), 100, 1 << 20, &mut batch)
                .unwrap();
            let got: Vec<(u8, Vec<u32>)> = batch
                .iter()
                .map(|(seq, b)| {
                    let out = decode_out(b, *seq).unwrap();
                    (out.msg.content[0], out.sub_ids)
                })
                .collect();
            assert_eq!(
                got,
                vec![(0, vec![9]), (1, vec![9]), (2, vec![9]), (3, vec![9])]
            );
        });
    }

    #[test]
    fn a_session_with_expiry_zero_ends_with_its_connection_and_a_fresh_start_forgets() {
        let dir = tempfile::tempdir().unwrap();
        smol::block_on(async {
            let local = Arc::new(Local::new(Duration::from_secs(1)));
            let sessions =
                Sessions::open(&dir.path().join("s"), config(dir.path()), local.clone()).unwrap();
            let apps: Vec<_> = (0..4)
                .map(|n| crate::local::app_channel(format!("{n}"), 16, 1 << 20))
                .collect();
            let filter = Filter::default();
            let any = Some(&filter);
            let (d, _) = sessions
                .attach(Kind::Ws, "a", false, any, 0, &apps[0].0)
                .unwrap();
            sessions.detach(&d, apps[0].0.id(), 0);
            assert!(!sessions.contains(Kind::Ws, "a"));
            let (d, _) = sessions
                .attach(Kind::Ws, "b", false, any, 60, &apps[1].0)
                .unwrap();
            local.deliver(message("x", 1));
            assert_eq!(d.queue.len(), 1);
            let (d2, present) = sessions
                .attach(Kind::Ws, "b", false, any, 60, &apps[2].0)
                .unwrap();
            assert!(present && Arc::ptr_eq(&d, &d2));
            assert_eq!(
                apps[1].1.cut_reason().as_deref(),
                Some(TAKEN_OVER),
                "the earlier connection is taken over"
            );
            // The taken-over connection leaving changes nothing for the session.
            sessions.detach(&d, apps[1].0.id(), 0);
            assert!(sessions.contains(Kind::Ws, "b"));
            let (d3, present) = sessions
                .attach(Kind::Ws, "b", true, any, 60, &apps[3].0)
                .unwrap();
            assert!(!present);
            assert_eq!(d3.queue.len(), 0);
            assert_eq!(folder(Kind::Mqtt, "a/b c"), "mqtt-a%2Fb%20c");
        });
    }
}
