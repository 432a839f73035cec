//! The message model: KubeEdge's `model.Message` (header, route, content).
//!
//! Applications exchange it as JSON (`{"header":{"msg_id","parent_msg_id","timestamp","sync"},
//! "route":{"source","group","operation","resource"},"content":…}`); the hubs carry it in a compact
//! binary form (see `docs/protocol.md`). The content is opaque to the hub: any JSON value on the
//! application side, its JSON text as bytes on the link.

use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// `header.msg_id`: unique per message; the hub makes one when the application leaves it empty.
    pub id: String,
    /// `header.parent_msg_id`: the request this message answers, or empty.
    pub parent_id: String,
    /// `header.timestamp`: milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// `header.sync`: a request that expects an answer.
    pub sync: bool,
    /// `header.urgent` (the hub's own header field, absent from KubeEdge's): the message travels
    /// on the link's urgent lane, with requests and responses, not behind bulk traffic
    /// (`docs/protocol.md` section 3).
    pub urgent: bool,
    /// `route.source`: who sent it.
    pub source: String,
    /// `route.group`: the kind of message (KubeEdge: `resource`, `user`, …).
    pub group: String,
    /// `route.operation`: what to do (`insert`, `update`, `response`, …).
    pub operation: String,
    /// `route.resource`: what it is about; `node/{node-id}/…` addresses a node from the cloud.
    pub resource: String,
    /// `content`: JSON text, or the bytes of an MQTT payload when [`raw`](Self::raw).
    pub content: Vec<u8>,
    /// The delivery promise its publisher asked for (MQTT QoS, section 4.3 of MQTT 5.0): 0 at most
    /// once, 1 at least once (what the WebSocket API's `accepted` promises), 2 exactly once. An
    /// MQTT subscriber gets it at the lower of this and the QoS its subscription was granted.
    pub qos: u8,
    /// An MQTT retained message (MQTT 5.0 section 3.3.1.3): the receiving hub keeps it for later
    /// subscribers of its topic; an empty retained payload clears what was kept.
    pub retain: bool,
    /// `content` is an MQTT payload (any bytes), not JSON text.
    pub raw: bool,
    /// The MQTT 5.0 properties carried with the message, when it has any.
    pub extra: Option<Box<Extra>>,
}

/// The MQTT 5.0 properties of a PUBLISH (section 3.3.2.3) that travel with a message between the
/// hubs; the request/response ones (Response Topic, Correlation Data) stay with the requesting
/// hub, which turns them into a sync request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extra {
    /// When the message expires, in milliseconds since the Unix epoch (Message Expiry Interval
    /// counted from its publication); 0: never.
    pub expires_at: i64,
    /// Content Type (section 3.3.2.3.9).
    pub content_type: String,
    /// Payload Format Indicator 1: the payload is UTF-8 text (section 3.3.2.3.2).
    pub payload_utf8: bool,
    /// User Properties, in order (section 3.3.2.3.7).
    pub user: Vec<(String, String)>,
    /// Response Topic (section 3.3.2.3.5), for subscribers on the hub where it was published.
    pub response_topic: String,
    /// Correlation Data (section 3.3.2.3.6), with the Response Topic.
    pub correlation: Vec<u8>,
}

/// Why bytes or JSON are not a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// The binary form ends early or a string is not UTF-8.
    Malformed(&'static str),
    /// The JSON is not a message.
    Json(String),
    /// A field is longer than the binary form allows.
    FieldTooLong(&'static str, usize),
    /// The whole message is over the configured limit.
    TooLarge(usize, usize),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Malformed(what) => write!(f, "malformed message: {what}"),
            MessageError::Json(e) => write!(f, "not a message: {e}"),
            MessageError::FieldTooLong(field, n) => {
                write!(f, "{field} is {n} bytes, over its limit")
            }
            MessageError::TooLarge(n, max) => {
                write!(f, "message of {n} bytes is over the {max}-byte limit")
            }
        }
    }
}

impl std::error::Error for MessageError {}

/// Longest `msg_id`, `parent_msg_id`, `source`, `group` and `operation` (one length byte).
pub const MAX_SHORT_FIELD: usize = 255;
/// Longest `resource` (two length bytes).
pub const MAX_RESOURCE: usize = 65535;

const FLAG_SYNC: u8 = 1;
const FLAG_URGENT: u8 = 2;
const FLAG_RAW: u8 = 4;
const FLAG_RETAIN: u8 = 8;
const QOS_SHIFT: u8 = 4;
const FLAG_EXTRA: u8 = 64;
/// The most user properties one message carries across the link.
pub const MAX_USER_PROPERTIES: usize = 65535;

fn put8(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), MessageError> {
    if s.len() > MAX_SHORT_FIELD {
        return Err(MessageError::FieldTooLong(field, s.len()));
    }
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        if self.0.len() < n {
            return Err(MessageError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn string(&mut self, n: usize) -> Result<String, MessageError> {
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| MessageError::Malformed("string is not UTF-8"))
    }
    fn str8(&mut self) -> Result<String, MessageError> {
        let n = usize::from(self.take(1)?[0]);
        self.string(n)
    }
    fn str16(&mut self) -> Result<String, MessageError> {
        let b = self.take(2)?;
        self.string(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn extra(&mut self) -> Result<Extra, MessageError> {
        let ts = self.take(8)?;
        let expires_at = i64::from_be_bytes(ts.try_into().expect("8 bytes"));
        let content_type = self.str16()?;
        let payload_utf8 = self.take(1)?[0] != 0;
        let n = self.take(2)?;
        let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
        let mut user = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            user.push((self.str16()?, self.str16()?));
        }
        let response_topic = self.str16()?;
        let n = self.take(2)?;
        let correlation = self
            .take(usize::from(u16::from_be_bytes([n[0], n[1]])))?
            .to_vec();
        Ok(Extra {
            expires_at,
            content_type,
            payload_utf8,
            user,
            response_topic,
            correlation,
        })
    }
}

fn put16(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), MessageError> {
    if s.len() > MAX_RESOURCE {
        return Err(MessageError::FieldTooLong(field, s.len()));
    }
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

impl Message {
    /// The binary form: `flags u8 | timestamp i64 | msg_id str8 | parent_msg_id str8 | source str8 |
    /// group str8 | operation str8 | resource str16 | [extra] | content (the rest)`, integers
    /// big-endian. Flags: 1 sync, 2 urgent, 4 raw content, 8 retain, 16 and 32 the QoS, 64 an
    /// extra block follows the resource: `expires_at i64 | content_type str16 | payload_utf8 u8 |
    /// count u16 | count x (name str16 | value str16) | response_topic str16 | correlation
    /// bytes16` (`docs/protocol.md` section 4).
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.encode_as(&self.resource)
    }

    /// [`encode`](Self::encode) with `resource` in place of the message's own (the cloud sends a
    /// message for `node/{node-id}/rest` as `rest`, and keeps the application's resource for its
    /// notice).
    pub fn encode_as(&self, resource: &str) -> Result<Vec<u8>, MessageError> {
        if resource.len() > MAX_RESOURCE {
            return Err(MessageError::FieldTooLong("route.resource", resource.len()));
        }
        let mut out = Vec::with_capacity(
            16 + self.id.len()
                + self.parent_id.len()
                + self.source.len()
                + self.group.len()
                + self.operation.len()
                + resource.len()
                + self.content.len(),
        );
        let mut flags = 0;
        if self.sync {
            flags |= FLAG_SYNC;
        }
        if self.urgent {
            flags |= FLAG_URGENT;
        }
        if self.raw {
            flags |= FLAG_RAW;
        }
        if self.retain {
            flags |= FLAG_RETAIN;
        }
        flags |= (self.qos.min(2)) << QOS_SHIFT;
        if self.extra.is_some() {
            flags |= FLAG_EXTRA;
        }
        out.push(flags);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        put8(&mut out, "header.msg_id", &self.id)?;
        put8(&mut out, "header.parent_msg_id", &self.parent_id)?;
        put8(&mut out, "route.source", &self.source)?;
        put8(&mut out, "route.group", &self.group)?;
        put8(&mut out, "route.operation", &self.operation)?;
        out.extend_from_slice(&(resource.len() as u16).to_be_bytes());
        out.extend_from_slice(resource.as_bytes());
        if let Some(extra) = &self.extra {
            out.extend_from_slice(&extra.expires_at.to_be_bytes());
            put16(&mut out, "content type", &extra.content_type)?;
            out.push(u8::from(extra.payload_utf8));
            if extra.user.len() > MAX_USER_PROPERTIES {
                return Err(MessageError::FieldTooLong(
                    "user properties",
                    extra.user.len(),
                ));
            }
            out.extend_from_slice(&(extra.user.len() as u16).to_be_bytes());
            for (name, value) in &extra.user {
                put16(&mut out, "user property", name)?;
                put16(&mut out, "user property", value)?;
            }
            put16(&mut out, "response topic", &extra.response_topic)?;
            if extra.correlation.len() > MAX_RESOURCE {
                return Err(MessageError::FieldTooLong(
                    "correlation data",
                    extra.correlation.len(),
                ));
            }
            out.extend_from_slice(&(extra.correlation.len() as u16).to_be_bytes());
            out.extend_from_slice(&extra.correlation);
        }
        out.extend_from_slice(&self.content);
        Ok(out)
    }

    /// Reads the binary form.
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        Message::decode_with_prefix(bytes, "")
    }

    /// [`decode`](Self::decode), with `prefix` put before the resource (the cloud's
    /// `node/{node-id}/` before what a node sends) in the same allocation.
    pub fn decode_with_prefix(bytes: &[u8], prefix: &str) -> Result<Message, MessageError> {
        let mut r = Reader(bytes);
        let flags = r.take(1)?[0];
        let ts = r.take(8)?;
        let timestamp = i64::from_be_bytes(ts.try_into().expect("8 bytes"));
        let mut msg = Message {
            sync: flags & FLAG_SYNC != 0,
            urgent: flags & FLAG_URGENT != 0,
            raw: flags & FLAG_RAW != 0,
            retain: flags & FLAG_RETAIN != 0,
            qos: ((flags >> QOS_SHIFT) & 3).min(2),
            timestamp,
            id: r.str8()?,
            parent_id: r.str8()?,
            source: r.str8()?,
            group: r.str8()?,
            operation: r.str8()?,
            resource: {
                let b = r.take(2)?;
                let text = r.take(usize::from(u16::from_be_bytes([b[0], b[1]])))?;
                let text = std::str::from_utf8(text)
                    .map_err(|_| MessageError::Malformed("string is not UTF-8"))?;
                let mut resource = String::with_capacity(prefix.len() + text.len());
                resource.push_str(prefix);
                resource.push_str(text);
                resource
            },
            content: Vec::new(),
            extra: None,
        };
        if flags & FLAG_EXTRA != 0 {
            msg.extra = Some(Box::new(r.extra()?));
        }
        msg.content = r.0.to_vec();
        Ok(msg)
    }

    /// Reads an application's JSON message. Missing header fields are left empty or zero (see
    /// [`fill_header`](Self::fill_header)); a missing content is `null`.
    pub fn from_json(text: &str) -> Result<Message, MessageError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Header {
            msg_id: String,
            parent_msg_id: String,
            timestamp: i64,
            sync: bool,
            urgent: bool,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Route {
            source: String,
            group: String,
            operation: String,
            resource: String,
        }
        #[derive(Deserialize)]
        struct Json<'a> {
            #[serde(default)]
            header: Header,
            #[serde(default)]
            route: Route,
            #[serde(borrow, default)]
            content: Option<&'a RawValue>,
        }
        let j: Json<'_> =
            serde_json::from_str(text).map_err(|e| MessageError::Json(e.to_string()))?;
        Ok(Message {
            id: j.header.msg_id,
            parent_id: j.header.parent_msg_id,
            timestamp: j.header.timestamp,
            sync: j.header.sync,
            urgent: j.header.urgent,
            source: j.route.source,
            group: j.route.group,
            operation: j.route.operation,
            resource: j.route.resource,
            content: j
                .content
                .map_or_else(|| b"null".to_vec(), |c| c.get().as_bytes().to_vec()),
            qos: 1,
            retain: false,
            raw: false,
            extra: None,
        })
    }

    /// The JSON an application receives.
    pub fn to_json(&self) -> String {
        self.to_json_answering(&self.parent_id)
    }

    /// [`to_json`](Self::to_json) with `parent_msg_id` given, without copying the message (the
    /// hub restores a requester's own id in the answer it hands over).
    pub fn to_json_answering(&self, parent_id: &str) -> String {
        let content = self.json_content();
        let content = content.as_ref();
        // The names, quotes and punctuation take at most about 150 bytes; escapes grow it.
        let mut out = String::with_capacity(
            160 + self.id.len()
                + parent_id.len()
                + self.source.len()
                + self.group.len()
                + self.operation.len()
                + self.resource.len()
                + content.len(),
        );
        out.push_str(r#"{"header":{"msg_id":"#);
        json_string(&mut out, &self.id);
        out.push_str(r#","parent_msg_id":"#);
        json_string(&mut out, parent_id);
        out.push_str(r#","timestamp":"#);
        push_int(&mut out, self.timestamp);
        out.push_str(if self.sync {
            r#","sync":true"#
        } else {
            r#","sync":false"#
        });
        if self.urgent {
            out.push_str(r#","urgent":true"#);
        }
        if self.retain {
            out.push_str(r#","retain":true"#);
        }
        out.push_str(r#"},"route":{"source":"#);
        json_string(&mut out, &self.source);
        out.push_str(r#","group":"#);
        json_string(&mut out, &self.group);
        out.push_str(r#","operation":"#);
        json_string(&mut out, &self.operation);
        out.push_str(r#","resource":"#);
        json_string(&mut out, &self.resource);
        out.push_str(r#"},"content":"#);
        out.push_str(content);
        out.push('}');
        out
    }

    /// The content as a JSON value's text, for an application of the WebSocket API: JSON content
    /// as it is; an MQTT payload that is JSON as it is, one that is other UTF-8 text as a JSON
    /// string, any other bytes as a JSON string of their base64 (RFC 4648 section 4); nothing
    /// as `null`.
    pub fn json_content(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        let text = std::str::from_utf8(&self.content);
        if !self.raw {
            return match text {
                Ok(c) if !c.trim().is_empty() => Cow::Borrowed(c),
                _ => Cow::Borrowed("null"),
            };
        }
        match text {
            Ok(c) if c.trim().is_empty() => Cow::Borrowed("null"),
            Ok(c) if serde_json::from_str::<serde::de::IgnoredAny>(c).is_ok() => Cow::Borrowed(c),
            Ok(c) => {
                let mut out = String::with_capacity(c.len() + 2);
                json_string(&mut out, c);
                Cow::Owned(out)
            }
            Err(_) => {
                use base64::Engine;
                let mut out = String::from("\"");
                out.push_str(&base64::engine::general_purpose::STANDARD.encode(&self.content));
                out.push('"');
                Cow::Owned(out)
            }
        }
    }

    /// The content as an MQTT payload: an MQTT payload as it is; JSON content that is a string
    /// as the string's text; other JSON as its text.
    pub fn payload(&self) -> std::borrow::Cow<'_, [u8]> {
        use std::borrow::Cow;
        if self.raw || self.content.first() != Some(&b'"') {
            return Cow::Borrowed(&self.content);
        }
        match serde_json::from_slice::<String>(&self.content) {
            Ok(s) => Cow::Owned(s.into_bytes()),
            Err(_) => Cow::Borrowed(&self.content),
        }
    }

    /// Gives the message an id (random, UUID-shaped) and a timestamp (now) when it has none.
    pub fn fill_header(&mut self) {
        if self.id.is_empty() {
            self.id = new_id();
        }
        if self.timestamp == 0 {
            self.timestamp = now_millis();
        }
    }

    /// The JSON text of [`notice`](Self::notice) about a message whose id is `about_id` and
    /// resource `about_resource`, written at once rather than through a [`Message`] and
    /// [`to_json`](Self::to_json) (the same text, with a fresh id and the current time): the
    /// notice that answers each publish of the WebSocket API (`docs/api.md`, Publishing).
    pub fn notice_json(
        about_id: &str,
        about_resource: &str,
        operation: &str,
        error: Option<&str>,
    ) -> String {
        let content = match error {
            Some(e) => std::borrow::Cow::Owned(serde_json::json!({ "error": e }).to_string()),
            None => std::borrow::Cow::Borrowed("null"),
        };
        let mut out = String::with_capacity(
            200 + about_id.len() + about_resource.len() + operation.len() + content.len(),
        );
        out.push_str(r#"{"header":{"msg_id":""#);
        push_new_id(&mut out);
        out.push_str(r#"","parent_msg_id":"#);
        json_string(&mut out, about_id);
        out.push_str(r#","timestamp":"#);
        push_int(&mut out, now_millis());
        out.push_str(r#","sync":false},"route":{"source":"hub","group":"hub","operation":"#);
        json_string(&mut out, operation);
        out.push_str(r#","resource":"#);
        json_string(&mut out, about_resource);
        out.push_str(r#"},"content":"#);
        out.push_str(&content);
        out.push('}');
        out
    }

    /// A message from the hub itself about `about` (its `parent_msg_id` is `about`'s id):
    /// `operation` is `accepted`, `error`, …; `error` becomes `{"error": "…"}` content.
    pub fn notice(about: &Message, operation: &str, error: Option<&str>) -> Message {
        Message {
            id: new_id(),
            parent_id: about.id.clone(),
            timestamp: now_millis(),
            sync: false,
            urgent: false,
            source: "hub".into(),
            group: "hub".into(),
            operation: operation.into(),
            resource: about.resource.clone(),
            content: match error {
                Some(e) => serde_json::json!({ "error": e }).to_string().into_bytes(),
                None => b"null".to_vec(),
            },
            qos: 1,
            retain: false,
            raw: false,
            extra: None,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Appends `s` as a JSON string: quoted, with `"`, `\` and control characters escaped.
///
/// Every byte that needs escaping is ASCII, so the text is scanned eight bytes at a time and
/// copied in runs between such bytes (most strings have none: one copy).
fn json_string(out: &mut String, s: &str) {
    /// Whether any of the eight bytes of `w` is below 0x20, `"` or `\`.
    fn special(w: u64) -> bool {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0
            || zero(w ^ (ONES * u64::from(b'"'))) != 0
            || zero(w ^ (ONES * u64::from(b'\\'))) != 0
    }
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            if !special(u64::from_le_bytes(word.try_into().expect("8 bytes"))) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        i += 1;
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        // `b` is ASCII: the run before it ends at a character boundary.
        out.push_str(&s[start..i - 1]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
        start = i;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends `n` in decimal.
fn push_int(out: &mut String, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

/// A new id shaped like a UUID v4: unique within the process (a counter) and across processes
/// (a 64-bit random seed from the system, taken once), without a system call per id.
pub fn new_id() -> String {
    let mut out = String::with_capacity(36);
    push_new_id(&mut out);
    out
}

/// Appends a [`new_id`] to `out` (36 characters: 8-4-4-4-12 lowercase hex digits).
fn push_new_id(out: &mut String) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .expect("the system's random source works");
        u64::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The seed's bits fill the first half; the second is the counter, masked by more of them
    // (a bijection, so no two ids of one process are ever equal).
    let mask = seed.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let hi = (seed & 0xffff_ffff_ffff_0fff) | 0x4000; // version 4
    let lo = ((n ^ mask) & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // variant 10
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'-'; 36];
    let mut put = |from: usize, digits: usize, v: u64| {
        for k in 0..digits {
            text[from + k] = HEX[((v >> (4 * (digits - 1 - k))) & 15) as usize];
        }
    };
    put(0, 8, hi >> 32);
    put(9, 4, (hi >> 16) & 0xffff);
    put(14, 4, hi & 0xffff);
    put(19, 4, lo >> 48);
    put(24, 12, lo & 0xffff_ffff_ffff);
    out.push_str(std::str::from_utf8(&text).expect("ASCII"));
}

/// The prefix a cloud application puts before a resource to address node `node_id`.
pub fn node_prefix(node_id: &str) -> String {
    format!("node/{node_id}/")
}

/// Splits `node/{node-id}/rest` into the node id and `rest`.
///
/// # Errors
/// One sentence saying why the resource addresses no node: it does not start with `node/`, or
/// the id is not a node id in its canonical form (`config::valid_id`: `node/EDGE/…`, `node/../…`
/// and `node/./…` address no node, rather than another spelling of one or a folder).
pub fn split_node_resource(resource: &str) -> Result<(&str, &str), String> {
    let Some(rest) = resource.strip_prefix("node/") else {
        return Err(format!(
            "resource {resource:?} does not start with node/{{node-id}}/"
        ));
    };
    let (node, rest) = rest.split_once('/').unwrap_or((rest, ""));
    crate::config::valid_id(node)
        .map_err(|p| format!("resource {resource:?} names no node: node id {p}"))?;
    Ok((node, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            id: "4f1c9a52-0000-4000-8000-000000000001".into(),
            parent_id: String::new(),
            timestamp: 1_700_000_000_123,
            sync: true,
            urgent: false,
            source: "app".into(),
            group: "resource".into(),
            operation: "update".into(),
            resource: "devices/valve-1".into(),
            content: br#"{"open":true,"level":0.5}"#.to_vec(),
            qos: 1,
            retain: false,
            raw: false,
            extra: None,
        }
    }

    #[test]
    fn binary_round_trip_and_truncation() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        // Every cut inside the header fields is refused; a cut in the content just shortens it.
        let header_len = bytes.len() - m.content.len();
        for cut in 0..header_len {
            assert!(Message::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn mqtt_attributes_round_trip_in_the_binary_form() {
        let m = Message {
            qos: 2,
            retain: true,
            raw: true,
            content: vec![0, 159, 146, 150],
            extra: Some(Box::new(Extra {
                expires_at: 1_700_000_060_000,
                content_type: "application/octet-stream".into(),
                payload_utf8: false,
                user: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                response_topic: "r/1".into(),
                correlation: vec![1, 2],
            })),
            ..sample()
        };
        let bytes = m.encode().unwrap();
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        let header_len = bytes.len() - m.content.len();
        for cut in 0..header_len {
            assert!(Message::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Without the extra block the flags still carry QoS, retain and raw.
        let plain = Message { extra: None, ..m };
        assert_eq!(Message::decode(&plain.encode().unwrap()).unwrap(), plain);
    }

    #[test]
    fn mqtt_payloads_as_json_content_and_back() {
        let raw = |content: &[u8]| Message {
            raw: true,
            content: content.to_vec(),
            ..sample()
        };
        assert_eq!(raw(br#"{"t":21.5}"#).json_content(), r#"{"t":21.5}"#);
        assert_eq!(raw(b"21.5").json_content(), "21.5");
        assert_eq!(raw(b"on \"now\"").json_content(), r#""on \"now\"""#);
        assert_eq!(raw(b"").json_content(), "null");
        assert_eq!(raw(&[0xff, 0, 1]).json_content(), r#""/wAB""#);
        // Every form is valid JSON inside the whole message.
        for m in [raw(b"on"), raw(&[0xff, 0, 1]), raw(b"{\"a\":1}")] {
            let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
            assert!(v["content"].is_string() || v["content"].is_object());
        }
        // JSON content reaches MQTT as its text, a JSON string as the string itself.
        let json = |content: &str| Message {
            content: content.as_bytes().to_vec(),
            ..sample()
        };
        assert_eq!(&*json(r#"{"a":1}"#).payload(), br#"{"a":1}"#);
        assert_eq!(&*json(r#""on\n""#).payload(), b"on\n");
        assert_eq!(&*raw(br#""quoted""#).payload(), br#""quoted""#);
    }

    #[test]
    fn json_round_trip_keeps_content_verbatim() {
        let m = sample();
        let json = m.to_json();
        assert!(
            json.contains(r#""content":{"open":true,"level":0.5}"#),
            "{json}"
        );
        assert_eq!(Message::from_json(&json).unwrap(), m);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["header"]["sync"], true);
        assert_eq!(v["route"]["resource"], "devices/valve-1");
    }

    #[test]
    fn json_escapes_strings_like_serde() {
        let m = Message {
            resource: "a\"b\\c\nd\u{1}é/☃".into(),
            source: "tab\there".into(),
            ..sample()
        };
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(v["route"]["resource"], m.resource.as_str());
        assert_eq!(v["route"]["source"], "tab\there");
        assert_eq!(Message::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn json_strings_escape_every_special_byte_at_every_position() {
        // Runs of plain text of every length around each byte that needs escaping, so that
        // the escape falls at each place of an eight-byte word, and multi-byte characters.
        let specials = [
            "\"", "\\", "\n", "\r", "\t", "\u{0}", "\u{1f}", "\u{8}", "é", "☃", "\u{7f}",
        ];
        for special in specials {
            for before in 0..18 {
                for after in [0, 1, 7, 8, 9] {
                    let s = format!("{}{special}{}", "a".repeat(before), "b".repeat(after));
                    let mut out = String::new();
                    json_string(&mut out, &s);
                    let back: String = serde_json::from_str(&out).unwrap();
                    assert_eq!(back, s, "{out}");
                    let plain = special.chars().all(|c| c >= ' ' && c != '"' && c != '\\');
                    assert_eq!(out.len() == s.len() + 2, plain, "{out}");
                }
            }
        }
        let mut out = String::new();
        json_string(&mut out, "x\u{1}\"\\\n\r\ty");
        assert_eq!(out, r#""x\u0001\"\\\n\r\ty""#);
    }

    #[test]
    fn decoding_with_a_prefix_puts_it_before_the_resource() {
        let m = sample();
        let bytes = m.encode().unwrap();
        let got = Message::decode_with_prefix(&bytes, "node/gw-1/").unwrap();
        assert_eq!(
            got,
            Message {
                resource: format!("node/gw-1/{}", m.resource),
                ..m.clone()
            }
        );
        assert_eq!(Message::decode_with_prefix(&bytes, "").unwrap(), m);
        let cut = &bytes[..bytes.len() - m.content.len() - 3];
        assert_eq!(
            Message::decode_with_prefix(cut, "node/gw-1/"),
            Err(MessageError::Malformed("truncated"))
        );
    }

    #[test]
    fn integers_in_decimal() {
        for n in [0, 7, -7, 10, 1_764_081_600_000, i64::MAX, i64::MIN] {
            let mut out = String::new();
            push_int(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn notice_json_is_the_notice_as_json() {
        let about = Message {
            id: "app-1\"".into(),
            resource: "node/gw-1/rooms/3".into(),
            ..Message::default()
        };
        for (operation, error) in [("accepted", None), ("error", Some("queue \"full\"\n"))] {
            let made: serde_json::Value = serde_json::from_str(&Message::notice_json(
                &about.id,
                &about.resource,
                operation,
                error,
            ))
            .unwrap();
            let mut notice = Message::notice(&about, operation, error);
            let id = made["header"]["msg_id"].as_str().unwrap();
            assert_eq!(id.len(), 36, "{id}");
            notice.id = id.to_owned();
            notice.timestamp = made["header"]["timestamp"].as_i64().unwrap();
            assert!(notice.timestamp > 1_600_000_000_000);
            let expected: serde_json::Value = serde_json::from_str(&notice.to_json()).unwrap();
            assert_eq!(made, expected);
        }
    }

    #[test]
    fn json_defaults_and_errors() {
        let mut m = Message::from_json(r#"{"route":{"resource":"a/b"}}"#).unwrap();
        assert_eq!(m.content, b"null");
        assert!(m.id.is_empty() && m.timestamp == 0);
        m.fill_header();
        assert_eq!(m.id.len(), 36);
        assert!(m.timestamp > 1_600_000_000_000);
        assert!(Message::from_json("[1,2]").is_err());
        assert!(Message::from_json(r#"{"header":{"sync":"yes"}}"#).is_err());
        let long = Message {
            group: "g".repeat(256),
            ..Message::default()
        };
        assert_eq!(
            long.encode(),
            Err(MessageError::FieldTooLong("route.group", 256))
        );
    }

    #[test]
    fn node_resources() {
        assert_eq!(
            split_node_resource("node/edge-7/devices/x"),
            Ok(("edge-7", "devices/x"))
        );
        assert_eq!(split_node_resource("node/edge-7"), Ok(("edge-7", "")));
        for bad in [
            "node//x",
            "devices/x",
            "node/bad id/x",
            "node/../cmd",
            "node/./cmd",
            "node/EDGE-7/x",
        ] {
            assert!(split_node_resource(bad).is_err(), "{bad}");
        }
        assert!(
            split_node_resource("node/Gw/x")
                .unwrap_err()
                .contains("so write \"gw\"")
        );
    }

    #[test]
    fn ids_are_unique_uuid_shaped() {
        let a = new_id();
        assert_ne!(a, new_id());
        assert_eq!(a.as_bytes()[14], b'4');
        assert!(matches!(a.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "{a}");
        let many: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(many.len(), 10_000);
        for id in &many {
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.bytes()
                    .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
    }
}
