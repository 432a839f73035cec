//! The message model: KubeEdge's `model.Message` (header, route, content).
//!
//! Applications exchange it as JSON (`{"header":{"msg_id","parent_msg_id","timestamp","sync"},
//! "route":{"source","group","operation","resource"},"content":…}`); the hubs carry it in a compact
//! binary form (see `docs/protocol.md`). The content is opaque to the hub: any JSON value on the
//! application side, its JSON text as bytes on the link.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

mod json;

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
        self.text(n).map(str::to_owned)
    }
    fn text(&mut self, n: usize) -> Result<&'a str, MessageError> {
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| MessageError::Malformed("string is not UTF-8"))
    }
    fn len16(&mut self) -> Result<usize, MessageError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    /// Steps over an extra block (as [`extra`](Self::extra) reads it), checking its strings.
    fn skip_extra(&mut self) -> Result<(), MessageError> {
        self.take(8)?;
        let n = self.len16()?;
        self.text(n)?;
        self.take(1)?;
        let count = self.len16()?;
        for _ in 0..2 * count + 1 {
            let n = self.len16()?;
            self.text(n)?;
        }
        let n = self.len16()?;
        self.take(n)?;
        Ok(())
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
        encode_parts(
            flags,
            self.timestamp,
            [
                &self.id,
                &self.parent_id,
                &self.source,
                &self.group,
                &self.operation,
            ],
            resource,
            self.extra.as_deref(),
            &self.content,
        )
    }

    /// Reads the binary form.
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        Message::decode_with_prefix(bytes, "")
    }

    /// [`decode`](Self::decode), with `prefix` put before the resource (the cloud's
    /// `node/{node-id}/` before what a node sends) in the same allocation.
    pub fn decode_with_prefix(bytes: &[u8], prefix: &str) -> Result<Message, MessageError> {
        let (mut msg, header) = Message::decode_header(bytes, prefix)?;
        msg.content = bytes[header..].to_vec();
        Ok(msg)
    }

    /// Everything but the content, and where the content starts.
    fn decode_header(bytes: &[u8], prefix: &str) -> Result<(Message, usize), MessageError> {
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
        Ok((msg, bytes.len() - r.0.len()))
    }

    /// Reads an application's JSON message. Missing header fields are left empty or zero (see
    /// [`fill_header`](Self::fill_header)); a missing content is `null`.
    pub fn from_json(text: &str) -> Result<Message, MessageError> {
        MessageRef::from_json(text).map(MessageRef::into_owned)
    }

    /// The JSON an application receives.
    pub fn to_json(&self) -> String {
        self.to_json_answering(&self.parent_id)
    }

    /// [`to_json`](Self::to_json) with `parent_msg_id` given, without copying the message (the
    /// hub restores a requester's own id in the answer it hands over).
    pub fn to_json_answering(&self, parent_id: &str) -> String {
        message_json(&JsonParts {
            id: &self.id,
            parent_id,
            timestamp: self.timestamp,
            sync: self.sync,
            urgent: self.urgent,
            retain: self.retain,
            source: &self.source,
            group: &self.group,
            operation: &self.operation,
            resource: ["", &self.resource],
            plain: false,
            content: &self.json_content(),
        })
    }

    /// The content as a JSON value's text, for an application of the WebSocket API: JSON content
    /// as it is; an MQTT payload that is JSON as it is, one that is other UTF-8 text as a JSON
    /// string, any other bytes as a JSON string of their base64 (RFC 4648 section 4); nothing
    /// as `null`.
    pub fn json_content(&self) -> Cow<'_, str> {
        json_content(&self.content, None, self.raw)
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
        const ROUTE: &str = r#","sync":false},"route":{"source":"hub","group":"hub","operation":"#;
        const RESOURCE: &str = r#","resource":"#;
        const CONTENT: &str = r#"},"content":"#;
        let timestamp = now_millis();
        let mut out = String::with_capacity(
            HEADER.len()
                + 38
                + PARENT.len()
                + about_id.len()
                + 2
                + TIMESTAMP.len()
                + int_len(timestamp)
                + ROUTE.len()
                + operation.len()
                + 2
                + RESOURCE.len()
                + about_resource.len()
                + 2
                + CONTENT.len()
                + content.len()
                + 1,
        );
        out.push_str(HEADER);
        out.push('"');
        push_new_id(&mut out);
        out.push('"');
        out.push_str(PARENT);
        json_string(&mut out, about_id);
        out.push_str(TIMESTAMP);
        push_int(&mut out, timestamp);
        out.push_str(ROUTE);
        json_string(&mut out, operation);
        out.push_str(RESOURCE);
        json_string(&mut out, about_resource);
        out.push_str(CONTENT);
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

/// The binary form ([`Message::encode`]) of the given parts, in one allocation of the exact size
/// when there is no extra block. `short` is `msg_id`, `parent_msg_id`, `source`, `group` and
/// `operation`.
fn encode_parts(
    mut flags: u8,
    timestamp: i64,
    short: [&str; 5],
    resource: &str,
    extra: Option<&Extra>,
    content: &[u8],
) -> Result<Vec<u8>, MessageError> {
    const NAMES: [&str; 5] = [
        "header.msg_id",
        "header.parent_msg_id",
        "route.source",
        "route.group",
        "route.operation",
    ];
    if resource.len() > MAX_RESOURCE {
        return Err(MessageError::FieldTooLong("route.resource", resource.len()));
    }
    let mut len = 1 + 8 + 5 + 2 + resource.len() + content.len();
    for (s, name) in short.iter().zip(NAMES) {
        if s.len() > MAX_SHORT_FIELD {
            return Err(MessageError::FieldTooLong(name, s.len()));
        }
        len += s.len();
    }
    let mut out = Vec::with_capacity(len);
    if extra.is_some() {
        flags |= FLAG_EXTRA;
    }
    out.push(flags);
    out.extend_from_slice(&timestamp.to_be_bytes());
    for s in short {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&(resource.len() as u16).to_be_bytes());
    out.extend_from_slice(resource.as_bytes());
    if let Some(extra) = extra {
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
    out.extend_from_slice(content);
    Ok(out)
}

/// An application's message as read from its JSON ([`MessageRef::from_json`]): its strings and
/// its content borrow from the JSON text (a string with escapes is unescaped into a copy), so
/// the WebSocket API's publish path goes from the application's frame to the queue's record
/// with one copy. The fields are [`Message`]'s; a message from JSON has QoS 1, no MQTT
/// attributes and JSON content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageRef<'a> {
    /// `header.msg_id`, or empty.
    pub id: Cow<'a, str>,
    /// `header.parent_msg_id`, or empty.
    pub parent_id: Cow<'a, str>,
    /// `header.timestamp`: milliseconds since the Unix epoch, or 0.
    pub timestamp: i64,
    /// `header.sync`.
    pub sync: bool,
    /// `header.urgent`.
    pub urgent: bool,
    /// `route.source`.
    pub source: Cow<'a, str>,
    /// `route.group`.
    pub group: Cow<'a, str>,
    /// `route.operation`.
    pub operation: Cow<'a, str>,
    /// `route.resource`.
    pub resource: Cow<'a, str>,
    /// `content`: its JSON text as the application wrote it, `null` when it is absent.
    pub content: &'a str,
}

impl<'a> MessageRef<'a> {
    /// Reads an application's JSON message (as [`Message::from_json`], which this is without
    /// the copies). Missing header fields are left empty or zero (see
    /// [`fill_header`](Self::fill_header)); a missing content is `null`.
    ///
    /// The common shape (strings without escapes, an integer timestamp, each field once) is read
    /// in one pass over the text; any other text goes through serde_json, which decides whether
    /// it is a message and gives the error ([`MessageError::Json`]) when it is not.
    pub fn from_json(text: &'a str) -> Result<MessageRef<'a>, MessageError> {
        match json::parse(text) {
            Some(m) => Ok(m),
            None => MessageRef::from_json_serde(text),
        }
    }

    /// [`from_json`](Self::from_json) through serde_json alone (the reading the one-pass reader
    /// must agree with; public for the fuzz target that checks it).
    #[doc(hidden)]
    pub fn from_json_serde(text: &'a str) -> Result<MessageRef<'a>, MessageError> {
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
        let j: Json<'a> =
            serde_json::from_str(text).map_err(|e| MessageError::Json(e.to_string()))?;
        Ok(MessageRef {
            id: Cow::Owned(j.header.msg_id),
            parent_id: Cow::Owned(j.header.parent_msg_id),
            timestamp: j.header.timestamp,
            sync: j.header.sync,
            urgent: j.header.urgent,
            source: Cow::Owned(j.route.source),
            group: Cow::Owned(j.route.group),
            operation: Cow::Owned(j.route.operation),
            resource: Cow::Owned(j.route.resource),
            content: j.content.map_or("null", RawValue::get),
        })
    }

    /// Gives the message an id (random, UUID-shaped) and a timestamp (now) when it has none.
    pub fn fill_header(&mut self) {
        if self.id.is_empty() {
            self.id = Cow::Owned(new_id());
        }
        if self.timestamp == 0 {
            self.timestamp = now_millis();
        }
    }

    /// The binary form ([`Message::encode`]) with `resource` in place of the message's own, in
    /// one allocation of its exact size.
    pub fn encode_as(&self, resource: &str) -> Result<Vec<u8>, MessageError> {
        let mut flags = 1 << QOS_SHIFT;
        if self.sync {
            flags |= FLAG_SYNC;
        }
        if self.urgent {
            flags |= FLAG_URGENT;
        }
        encode_parts(
            flags,
            self.timestamp,
            [
                &self.id,
                &self.parent_id,
                &self.source,
                &self.group,
                &self.operation,
            ],
            resource,
            None,
            self.content.as_bytes(),
        )
    }

    /// The owned [`Message`].
    pub fn into_owned(self) -> Message {
        Message {
            id: self.id.into_owned(),
            parent_id: self.parent_id.into_owned(),
            timestamp: self.timestamp,
            sync: self.sync,
            urgent: self.urgent,
            source: self.source.into_owned(),
            group: self.group.into_owned(),
            operation: self.operation.into_owned(),
            resource: self.resource.into_owned(),
            content: self.content.as_bytes().to_vec(),
            qos: 1,
            retain: false,
            raw: false,
            extra: None,
        }
    }
}

/// A message in its binary form ([`Message::encode`]), read in place: its strings and content
/// borrow from the bytes, so a message from the link is routed and written as an application's
/// JSON without an owned [`Message`] ([`to_owned`](Self::to_owned) makes one where a sink keeps
/// it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageView<'a> {
    flags: u8,
    /// `header.timestamp`.
    pub timestamp: i64,
    /// `header.msg_id`.
    pub id: &'a str,
    /// `header.parent_msg_id`.
    pub parent_id: &'a str,
    /// `route.source`.
    pub source: &'a str,
    /// `route.group`.
    pub group: &'a str,
    /// `route.operation`.
    pub operation: &'a str,
    /// `route.resource` is this prefix (the cloud's `node/{node-id}/`, or empty) followed by
    /// [`resource`](Self::resource).
    pub prefix: &'a str,
    /// `route.resource` after [`prefix`](Self::prefix): as the bytes carry it.
    pub resource: &'a str,
    /// The extra block's bytes (MQTT 5.0 properties), when there is one.
    extra: Option<&'a [u8]>,
    /// `content`.
    pub content: &'a [u8],
    /// `content` as text, when it is JSON text and was checked to be UTF-8.
    text: Option<&'a str>,
    /// No string (the prefix aside) needs a JSON escape.
    plain: bool,
}

/// The longest run of strings [`MessageView::decode`] checks for escapes at once.
const PLAIN_CHECK: usize = 256;

impl<'a> MessageView<'a> {
    /// Reads the binary form of `bytes` (with the checks of [`Message::decode_with_prefix`]),
    /// `prefix` standing before the resource.
    pub fn decode(bytes: &'a [u8], prefix: &'a str) -> Result<MessageView<'a>, MessageError> {
        let mut r = Reader(bytes);
        let flags = r.take(1)?[0];
        let ts = r.take(8)?;
        let timestamp = i64::from_be_bytes(ts.try_into().expect("8 bytes"));
        // Where each string is: msg_id, parent_msg_id, source, group, operation, resource.
        let mut spans = [(0, 0); 6];
        for (i, span) in spans.iter_mut().enumerate() {
            let n = if i < 5 {
                usize::from(r.take(1)?[0])
            } else {
                r.len16()?
            };
            let at = bytes.len() - r.0.len();
            r.take(n)?;
            *span = (at, at + n);
        }
        let extra = if flags & FLAG_EXTRA != 0 {
            let rest = r.0;
            r.skip_extra()?;
            Some(&rest[..rest.len() - r.0.len()])
        } else {
            None
        };
        let content = r.0;
        // One UTF-8 check for the strings and, when it is JSON text, the content, rather than
        // one each: the length bytes between them are ASCII but for long fields, and a string
        // that starts or ends on a character boundary of checked text is itself UTF-8. When
        // that does not hold, each string is checked on its own.
        const FIRST: usize = 1 + 8;
        let whole = extra.is_none() && flags & FLAG_RAW == 0;
        let end = if whole { bytes.len() } else { spans[5].1 };
        let checked = std::str::from_utf8(&bytes[FIRST..end]).ok();
        let field = |(a, b): (usize, usize)| match checked.and_then(|t| t.get(a - FIRST..b - FIRST))
        {
            Some(s) => Ok(s),
            None => std::str::from_utf8(&bytes[a..b])
                .map_err(|_| MessageError::Malformed("string is not UTF-8")),
        };
        // Whether any string needs a JSON escape, in one look over all of them (with the
        // length bytes between them overwritten) rather than one each; only for the usual
        // short ones, which fit a buffer on the stack.
        let head = &bytes[FIRST..spans[5].1];
        let plain = head.len() <= PLAIN_CHECK && {
            let mut buf = [b'a'; PLAIN_CHECK];
            buf[..head.len()].copy_from_slice(head);
            for &(a, _) in &spans[..5] {
                buf[a - 1 - FIRST] = b'a';
            }
            buf[spans[5].0 - 2 - FIRST..spans[5].0 - FIRST].copy_from_slice(b"aa");
            !needs_escape(&buf[..head.len()])
        };
        Ok(MessageView {
            plain,
            flags,
            timestamp,
            id: field(spans[0])?,
            parent_id: field(spans[1])?,
            source: field(spans[2])?,
            group: field(spans[3])?,
            operation: field(spans[4])?,
            prefix,
            resource: field(spans[5])?,
            extra,
            content,
            text: checked
                .filter(|_| whole)
                .map(|t| &t[bytes.len() - content.len() - FIRST..]),
        })
    }

    /// `header.sync`.
    pub fn sync(&self) -> bool {
        self.flags & FLAG_SYNC != 0
    }

    /// `header.urgent`.
    pub fn urgent(&self) -> bool {
        self.flags & FLAG_URGENT != 0
    }

    /// An MQTT retained message.
    pub fn retain(&self) -> bool {
        self.flags & FLAG_RETAIN != 0
    }

    /// The content is an MQTT payload.
    pub fn raw(&self) -> bool {
        self.flags & FLAG_RAW != 0
    }

    /// The publisher's QoS (0 to 2).
    pub fn qos(&self) -> u8 {
        ((self.flags >> QOS_SHIFT) & 3).min(2)
    }

    /// It carries MQTT 5.0 properties.
    pub fn has_extra(&self) -> bool {
        self.extra.is_some()
    }

    /// Whether `route.resource` starts with `p`.
    pub fn resource_starts_with(&self, p: &str) -> bool {
        match p.strip_prefix(self.prefix) {
            Some(rest) => self.resource.starts_with(rest),
            None => self.prefix.starts_with(p),
        }
    }

    /// The owned [`Message`].
    pub fn to_owned(&self) -> Message {
        let mut resource = String::with_capacity(self.prefix.len() + self.resource.len());
        resource.push_str(self.prefix);
        resource.push_str(self.resource);
        Message {
            id: self.id.to_owned(),
            parent_id: self.parent_id.to_owned(),
            timestamp: self.timestamp,
            sync: self.sync(),
            urgent: self.urgent(),
            source: self.source.to_owned(),
            group: self.group.to_owned(),
            operation: self.operation.to_owned(),
            resource,
            content: self.content.to_vec(),
            qos: self.qos(),
            retain: self.retain(),
            raw: self.raw(),
            extra: self
                .extra
                .map(|e| Box::new(Reader(e).extra().expect("checked by MessageView::decode"))),
        }
    }

    /// The JSON an application receives ([`Message::to_json`] of [`to_owned`](Self::to_owned),
    /// written from the bytes).
    pub fn to_json(&self) -> String {
        message_json(&JsonParts {
            id: self.id,
            parent_id: self.parent_id,
            timestamp: self.timestamp,
            sync: self.sync(),
            urgent: self.urgent(),
            retain: self.retain(),
            source: self.source,
            group: self.group,
            operation: self.operation,
            resource: [self.prefix, self.resource],
            plain: self.plain,
            content: &json_content(self.content, self.text, self.raw()),
        })
    }
}

/// The content `content` (an MQTT payload when `raw`) as a JSON value's text: see
/// [`Message::json_content`]. `text` is `content` as text, when already checked.
fn json_content<'a>(content: &'a [u8], text: Option<&'a str>, raw: bool) -> Cow<'a, str> {
    let text = text.map_or_else(|| std::str::from_utf8(content), Ok);
    if !raw {
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
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(content));
            out.push('"');
            Cow::Owned(out)
        }
    }
}

/// The fields of a message's JSON ([`message_json`]).
struct JsonParts<'a> {
    id: &'a str,
    parent_id: &'a str,
    timestamp: i64,
    sync: bool,
    urgent: bool,
    retain: bool,
    source: &'a str,
    group: &'a str,
    operation: &'a str,
    /// `route.resource`: these two, one after the other.
    resource: [&'a str; 2],
    /// None of the strings but `resource[0]` needs an escape (known already).
    plain: bool,
    /// The content's JSON text.
    content: &'a str,
}

/// The JSON an application receives (`docs/api.md`), in a string of its exact size when no
/// field needs an escape.
fn message_json(m: &JsonParts<'_>) -> String {
    const SYNC: &str = r#","sync":true"#;
    const NOT_SYNC: &str = r#","sync":false"#;
    const URGENT: &str = r#","urgent":true"#;
    const RETAIN: &str = r#","retain":true"#;
    const SOURCE: &str = r#"},"route":{"source":"#;
    const GROUP: &str = r#","group":"#;
    const OPERATION: &str = r#","operation":"#;
    const RESOURCE: &str = r#","resource":"#;
    const CONTENT: &str = r#"},"content":"#;
    let strings = [m.id, m.parent_id, m.source, m.group, m.operation];
    let mut out = String::with_capacity(
        HEADER.len()
            + PARENT.len()
            + TIMESTAMP.len()
            + if m.sync { SYNC } else { NOT_SYNC }.len()
            + if m.urgent { URGENT.len() } else { 0 }
            + if m.retain { RETAIN.len() } else { 0 }
            + SOURCE.len()
            + GROUP.len()
            + OPERATION.len()
            + RESOURCE.len()
            + CONTENT.len()
            + 1
            + int_len(m.timestamp)
            + strings.iter().map(|s| s.len() + 2).sum::<usize>()
            + m.resource[0].len()
            + m.resource[1].len()
            + 2
            + m.content.len(),
    );
    let string = |out: &mut String, s: &str| {
        if m.plain {
            out.push('"');
            out.push_str(s);
            out.push('"');
        } else {
            json_string(out, s);
        }
    };
    out.push_str(HEADER);
    string(&mut out, m.id);
    out.push_str(PARENT);
    string(&mut out, m.parent_id);
    out.push_str(TIMESTAMP);
    push_int(&mut out, m.timestamp);
    out.push_str(if m.sync { SYNC } else { NOT_SYNC });
    if m.urgent {
        out.push_str(URGENT);
    }
    if m.retain {
        out.push_str(RETAIN);
    }
    out.push_str(SOURCE);
    string(&mut out, m.source);
    out.push_str(GROUP);
    string(&mut out, m.group);
    out.push_str(OPERATION);
    string(&mut out, m.operation);
    out.push_str(RESOURCE);
    out.push('"');
    json_string_body(&mut out, m.resource[0]);
    if m.plain {
        out.push_str(m.resource[1]);
    } else {
        json_string_body(&mut out, m.resource[1]);
    }
    out.push('"');
    out.push_str(CONTENT);
    out.push_str(m.content);
    out.push('}');
    out
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
    out.push('"');
    json_string_body(out, s);
    out.push('"');
}

/// [`json_string`] without the quotes.
fn json_string_body(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.push_str(s);
        return;
    }
    out.reserve(s.len());
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let word = match bytes.get(i..i + 8) {
            Some(word) => word.try_into().expect("8 bytes"),
            // The last few bytes, padded with a byte that needs no escape.
            None => {
                let mut word = [b'a'; 8];
                word[..bytes.len() - i].copy_from_slice(&bytes[i..]);
                word
            }
        };
        match special_at(u64::from_le_bytes(word)) {
            None => {
                i += 8;
                continue;
            }
            Some(at) => i += at,
        }
        let b = bytes[i];
        i += 1;
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
}

/// Whether any byte of `bytes` is below 0x20, `"` or `\\`: eight at a time, the last eight
/// (overlapping those before) for the rest.
fn needs_escape(bytes: &[u8]) -> bool {
    let special = |b: &u8| *b < 0x20 || *b == b'"' || *b == b'\\';
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let n = bytes.len();
    if n < 8 {
        return bytes.iter().any(special);
    }
    let mut i = 0;
    while i + 8 <= n {
        if special_at(word(i)).is_some() {
            return true;
        }
        i += 8;
    }
    i < n && special_at(word(n - 8)).is_some()
}

/// The place (0 to 7) of the first of the eight bytes of `w` (read little-endian) that is below
/// 0x20, `"` or `\`. Each test sets the high bit of such a byte; a borrow only carries into
/// the bytes above one, so the lowest bit set is exact.
fn special_at(w: u64) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let found = (w.wrapping_sub(ONES * 0x20) & !w
        | zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\'))))
        & HIGH;
    (found != 0).then(|| found.trailing_zeros() as usize / 8)
}

/// The start of a message's JSON, up to its id's value; then up to `parent_msg_id`'s value, and
/// up to the timestamp's. The JSON writers size their string for the text without escapes
/// (which are rare): exactly, so that no byte is moved on the way and `bytes::Bytes::from`
/// (which the WebSocket writer makes of it) takes it without an allocation of its own.
const HEADER: &str = r#"{"header":{"msg_id":"#;
const PARENT: &str = r#","parent_msg_id":"#;
const TIMESTAMP: &str = r#","timestamp":"#;

/// The length of `n` in decimal.
fn int_len(n: i64) -> usize {
    usize::from(n < 0) + decimal_len(n.unsigned_abs())
}

/// The digits of `v` in decimal.
fn decimal_len(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// Appends `n` in decimal (itoa's digits: no UTF-8 check of them as `str::from_utf8` would
/// make).
fn push_int(out: &mut String, n: i64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// A new id shaped like a UUID v4: unique within the process (a counter) and across processes
/// (a 64-bit random seed from the system, taken once), without a system call per id.
pub fn new_id() -> String {
    let mut out = String::with_capacity(36);
    push_new_id(&mut out);
    out
}

/// Appends a [`new_id`] to `out`.
fn push_new_id(out: &mut String) {
    let mut id = [0; 36];
    write_new_id(&mut id);
    out.push_str(std::str::from_utf8(&id).expect("ASCII"));
}

/// Writes a [`new_id`] (36 characters: 8-4-4-4-12 lowercase hex digits).
fn write_new_id(text: &mut [u8; 36]) {
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
    let mut hex = [0u8; 32];
    for (k, half) in [hi >> 32, hi, lo >> 32, lo].into_iter().enumerate() {
        hex[8 * k..8 * k + 8].copy_from_slice(&hex8(half as u32));
    }
    text[..8].copy_from_slice(&hex[..8]);
    text[9..13].copy_from_slice(&hex[8..12]);
    text[14..18].copy_from_slice(&hex[12..16]);
    text[19..23].copy_from_slice(&hex[16..20]);
    text[24..].copy_from_slice(&hex[20..]);
    for dash in [8, 13, 18, 23] {
        text[dash] = b'-';
    }
}

/// `v` in eight lowercase hex digits, each nibble spread into a byte of its own and turned into
/// its digit in one go.
fn hex8(v: u32) -> [u8; 8] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut x = u64::from(v);
    x = (x | x << 16) & 0x0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
    x = (x | x << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is 10 or more.
    let letters = ((x + ONES * 6) >> 4) & ONES;
    (x + ONES * u64::from(b'0') + letters * u64::from(b'a' - b'0' - 10)).to_be_bytes()
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
    fn a_message_read_in_place_is_the_decoded_one() {
        let mqtt = Message {
            qos: 2,
            raw: true,
            content: vec![0, 159, 146, 150],
            extra: Some(Box::new(Extra {
                expires_at: 1_700_000_060_000,
                content_type: "text/plain".into(),
                payload_utf8: false,
                user: vec![("k".into(), "v".into())],
                response_topic: "r/1".into(),
                correlation: vec![1, 2],
            })),
            ..sample()
        };
        let escaped = Message {
            id: "a\"b".into(),
            parent_id: "p\n".into(),
            urgent: true,
            retain: true,
            resource: "dev\\ices/\u{1}x".into(),
            content: b"  ".to_vec(),
            ..sample()
        };
        // Fields whose length bytes are not ASCII (each string checked on its own then), and
        // content that is not UTF-8.
        let long = Message {
            id: format!("a{}", "é".repeat(97)),
            operation: "ü".repeat(100),
            content: vec![b'1', 0xff],
            ..sample()
        };
        // One byte to escape, at the end of the strings.
        let last = Message {
            resource: "devices/x\"".into(),
            ..sample()
        };
        for m in [sample(), mqtt, escaped, long, last, Message::default()] {
            let bytes = m.encode().unwrap();
            for prefix in ["", "node/gw-1/"] {
                let owned = Message::decode_with_prefix(&bytes, prefix).unwrap();
                let view = MessageView::decode(&bytes, prefix).unwrap();
                assert_eq!(view.to_owned(), owned, "{m:?} after {prefix:?}");
                assert_eq!(view.to_json(), owned.to_json(), "{m:?} after {prefix:?}");
                assert_eq!(view.has_extra(), owned.extra.is_some());
                let full = &owned.resource;
                let mut tries: Vec<String> = (0..=full.len())
                    .filter(|&i| full.is_char_boundary(i))
                    .map(|i| full[..i].to_owned())
                    .collect();
                tries.extend(["node/gw-2/".into(), format!("{full}/"), "x".into()]);
                for p in tries {
                    assert_eq!(view.resource_starts_with(&p), full.starts_with(&p), "{p:?}");
                }
            }
            let header_len = bytes.len() - m.content.len();
            for cut in 0..header_len {
                assert!(
                    MessageView::decode(&bytes[..cut], "").is_err(),
                    "cut at {cut}"
                );
            }
        }
        let mut bad = sample().encode().unwrap();
        bad[11] = 0xff;
        assert_eq!(
            MessageView::decode(&bad, ""),
            Err(MessageError::Malformed("string is not UTF-8"))
        );
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
        for n in [
            0,
            7,
            -7,
            10,
            99,
            100,
            -101,
            1_764_081_600_000,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = String::new();
            push_int(&mut out, n);
            assert_eq!(out, n.to_string());
            assert_eq!(int_len(n), out.len(), "{n}");
        }
    }

    #[test]
    fn json_is_written_in_a_string_of_its_exact_size() {
        // Sized before it is written, for the text without escapes: every flag and form of
        // content; a string with escapes grows it (and is still right).
        let exact = [
            sample(),
            Message {
                parent_id: "p".repeat(17),
                timestamp: -1,
                urgent: true,
                retain: true,
                sync: false,
                resource: "é☃/".repeat(100),
                ..sample()
            },
            Message {
                raw: true,
                content: vec![0xff, 0, 1],
                ..sample()
            },
            Message {
                raw: true,
                content: b"on \"now\"".to_vec(),
                ..sample()
            },
            Message::default(),
        ];
        for m in exact {
            let json = m.to_json();
            assert_eq!(json.capacity(), json.len(), "{json}");
            let back: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(back["header"]["msg_id"], m.id.as_str());
        }
        let escaped = Message {
            id: "a\"b\\c\nd\u{1}\t\r".into(),
            ..sample()
        };
        let back: serde_json::Value = serde_json::from_str(&escaped.to_json()).unwrap();
        assert_eq!(back["header"]["msg_id"], escaped.id.as_str());
        for (id, error, exact) in [
            ("id-1", None, true),
            ("id-1", Some("queue \"full\""), true),
            ("id\"1", None, false),
        ] {
            let json = Message::notice_json(id, "r/s", "accepted", error);
            assert_eq!(json.capacity() == json.len(), exact, "{json}");
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
    fn hex_digits() {
        for v in [0, 9, 10, 0xabcd_1234, 0xffff_ffff, 0x0123_4567, 0x89ab_cdef] {
            assert_eq!(hex8(v), *format!("{v:08x}").as_bytes(), "{v:x}");
        }
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
