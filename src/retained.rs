//! Retained messages (MQTT 5.0 section 3.3.1.3): the last retained message of each topic, kept
//! by the hub that receives it for the subscribers that come later, and saved to disk.
//!
//! The file is a snapshot (`u32` length, big-endian, then the message's binary form, per
//! message), rewritten at most once a second while something changed, and whenever the hub
//! stops: like Mosquitto's autosave, a retained message set less than a second before a crash
//! of the hub may be lost (the messages themselves are not: they went through the queues).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::message::Message;

/// The most topics with a retained message.
pub const MAX_TOPICS: usize = 100_000;
/// The most bytes of retained messages (their binary form).
pub const MAX_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Kept {
    by_topic: BTreeMap<String, Arc<Message>>,
    bytes: usize,
}

/// The retained messages of one hub.
pub struct Retained {
    kept: Mutex<Kept>,
    file: Option<PathBuf>,
    dirty: AtomicBool,
    refused: AtomicU64,
}

fn size(msg: &Message) -> usize {
    msg.content.len() + msg.resource.len() + 64
}

impl Retained {
    /// Retained messages kept in memory only.
    pub fn in_memory() -> Retained {
        Retained {
            kept: Mutex::new(Kept::default()),
            file: None,
            dirty: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    /// The retained messages saved in `file` (none if it does not exist yet), saved there again
    /// as they change (see the module's documentation for when).
    ///
    /// Errors: the file exists but cannot be read; a damaged tail is logged and dropped.
    pub fn open(file: &Path) -> Result<Arc<Retained>, String> {
        let mut kept = Kept::default();
        match std::fs::File::open(file) {
            Ok(mut f) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                let mut rest = &bytes[..];
                while rest.len() >= 4 {
                    let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                    let Some(record) = rest.get(4..4 + len) else {
                        break;
                    };
                    match Message::decode(record) {
                        Ok(m) => {
                            kept.bytes += size(&m);
                            kept.by_topic.insert(m.resource.clone(), Arc::new(m));
                        }
                        Err(_) => break,
                    }
                    rest = &rest[4 + len..];
                }
                if !rest.is_empty() {
                    log::warn!(
                        "{}: dropped a damaged tail of {} bytes",
                        file.display(),
                        rest.len()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        }
        let retained = Arc::new(Retained {
            kept: Mutex::new(kept),
            file: Some(file.to_owned()),
            dirty: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&retained);
        smol::spawn(async move {
            loop {
                smol::Timer::after(Duration::from_secs(1)).await;
                let Some(r) = weak.upgrade() else { return };
                if r.dirty.load(Ordering::Acquire) {
                    let _ = smol::unblock(move || r.save()).await;
                }
            }
        })
        .detach();
        Ok(retained)
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `msg` as its topic's retained message, or clears the topic when its payload is
    /// empty (MQTT 5.0 section 3.3.1.3). A new topic beyond [`MAX_TOPICS`] or [`MAX_BYTES`] is
    /// not kept (logged; the message itself is still delivered).
    pub fn update(&self, msg: &Arc<Message>) {
        let mut kept = self.lock();
        if let Some(old) = kept.by_topic.remove(&msg.resource) {
            kept.bytes -= size(&old);
        }
        if !msg.content.is_empty() {
            if kept.by_topic.len() >= MAX_TOPICS || kept.bytes + size(msg) > MAX_BYTES {
                drop(kept);
                let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    log::warn!(
                        "retained message for {:?} not kept: {MAX_TOPICS} topics or {MAX_BYTES} bytes are kept already ({n} such so far)",
                        msg.resource
                    );
                }
                self.dirty.store(true, Ordering::Release);
                return;
            }
            kept.bytes += size(msg);
            let mut stored = (**msg).clone();
            stored.retain = true;
            kept.by_topic.insert(msg.resource.clone(), Arc::new(stored));
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// The retained messages whose topics `filter` matches, in topic order, leaving out those
    /// whose Message Expiry Interval passed.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = crate::message::now_millis();
        self.lock()
            .by_topic
            .values()
            .filter(|m| {
                crate::mqtt::topic::matches(filter, &m.resource) && !crate::local::expired(m, now)
            })
            .cloned()
            .collect()
    }

    /// How many topics have a retained message.
    pub fn len(&self) -> usize {
        self.lock().by_topic.len()
    }

    /// Whether no topic has a retained message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the snapshot now (to a temporary file, then renamed over the old one), if it
    /// changed.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let mut bytes = Vec::new();
        for m in self.lock().by_topic.values() {
            if let Ok(b) = m.encode() {
                bytes.extend_from_slice(&(b.len() as u32).to_be_bytes());
                bytes.extend_from_slice(&b);
            }
        }
        let tmp = file.with_extension("tmp");
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
            std::fs::rename(&tmp, file)
        })();
        if let Err(e) = &written {
            self.dirty.store(true, Ordering::Release);
            log::error!(
                "cannot save the retained messages to {}: {e}",
                file.display()
            );
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retained(topic: &str, payload: &[u8]) -> Arc<Message> {
        Arc::new(Message {
            resource: topic.into(),
            content: payload.to_vec(),
            retain: true,
            raw: true,
            qos: 1,
            ..Message::default()
        })
    }

    #[test]
    fn the_last_one_per_topic_is_kept_an_empty_one_clears_and_all_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("retained");
        smol::block_on(async {
            let r = Retained::open(&file).unwrap();
            r.update(&retained("a/1", b"old"));
            r.update(&retained("a/1", b"new"));
            r.update(&retained("a/2", b"x"));
            r.update(&retained("b", b"y"));
            r.update(&retained("b", b""));
            let got: Vec<_> = r
                .matching("a/+")
                .iter()
                .map(|m| m.content.clone())
                .collect();
            assert_eq!(got, vec![b"new".to_vec(), b"x".to_vec()]);
            assert!(
                r.matching("b").is_empty(),
                "an empty payload clears the topic"
            );
            r.save().unwrap();
        });
        let again = smol::block_on(async { Retained::open(&file).unwrap() });
        assert_eq!(again.len(), 2);
        assert_eq!(again.matching("#")[0].content, b"new");
    }
}
