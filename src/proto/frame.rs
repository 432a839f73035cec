//! The frame codec. A frame is one type byte followed by that type's fields; integers are
//! big-endian, strings are a length (u8) followed by UTF-8. WebSocket carries one frame per binary
//! message; QUIC streams carry frames behind a 4-byte length ([`encode_len_prefixed`],
//! [`StreamDecoder`]). See `docs/protocol.md`.

use std::fmt;
use std::time::Duration;

use super::{MAX_FRAME, VERSION};

/// Frame type bytes.
mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const HEARTBEAT: u8 = 0x03;
    pub const MESSAGE: u8 = 0x10;
    pub const ACK: u8 = 0x11;
    pub const PART: u8 = 0x12;
}

/// Why a link was closed. Carried as the QUIC application error code, and as `4000 + code` in a
/// WebSocket close frame; each has a fixed reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// The sender is stopping (SIGTERM/SIGINT).
    ShuttingDown,
    /// A newer connection for the same node replaced this one.
    Replaced,
    /// The cloud already serves `node-limit` nodes.
    NodeLimit,
    /// The certificate's identity is not the node id claimed, or the ids disagree.
    IdentityMismatch,
    /// A frame was malformed, unknown or out of place.
    ProtocolError,
    /// A frame was larger than the receiver accepts.
    Oversized,
    /// Nothing arrived within the receiver's deadline.
    Timeout,
    /// Writes stayed blocked longer than the write deadline.
    WriteTimeout,
    /// The peer speaks a protocol version this side does not.
    UnsupportedVersion,
    /// The cloud cannot serve the node now (its queue cannot be opened, …); try again later.
    Unavailable,
}

impl CloseCode {
    /// Every code, in wire order.
    pub const ALL: [CloseCode; 10] = [
        CloseCode::ShuttingDown,
        CloseCode::Replaced,
        CloseCode::NodeLimit,
        CloseCode::IdentityMismatch,
        CloseCode::ProtocolError,
        CloseCode::Oversized,
        CloseCode::Timeout,
        CloseCode::WriteTimeout,
        CloseCode::UnsupportedVersion,
        CloseCode::Unavailable,
    ];

    /// The number on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::ShuttingDown => 1,
            CloseCode::Replaced => 2,
            CloseCode::NodeLimit => 3,
            CloseCode::IdentityMismatch => 4,
            CloseCode::ProtocolError => 5,
            CloseCode::Oversized => 6,
            CloseCode::Timeout => 7,
            CloseCode::WriteTimeout => 8,
            CloseCode::UnsupportedVersion => 9,
            CloseCode::Unavailable => 10,
        }
    }

    /// The code for a number from the wire, if it is one.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The fixed reason text.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::ShuttingDown => "shutting down",
            CloseCode::Replaced => "replaced by a newer connection",
            CloseCode::NodeLimit => "node limit reached",
            CloseCode::IdentityMismatch => "identity mismatch",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::Oversized => "oversized frame",
            CloseCode::Timeout => "heartbeat timeout",
            CloseCode::WriteTimeout => "write timeout",
            CloseCode::UnsupportedVersion => "unsupported protocol version",
            CloseCode::Unavailable => "cloud unavailable",
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// A lane of the link: an independent ordered sequence of messages in each direction, with its
/// own durable queue, receive window and acknowledgements, and over QUIC its own stream, so that
/// a backlog or a lost packet on one never holds up the other (`docs/protocol.md` section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Requests (`header.sync`), responses (`header.parent_msg_id`) and what an application
    /// marks `header.urgent`; also carries every frame that is not a message.
    Urgent,
    /// Everything else.
    Bulk,
}

/// How many lanes a link has.
pub const LANES: usize = 2;

impl Lane {
    /// Every lane, in wire order.
    pub const ALL: [Lane; LANES] = [Lane::Urgent, Lane::Bulk];

    /// The number on the wire, and the lane's index in per-lane arrays.
    pub fn index(self) -> usize {
        match self {
            Lane::Urgent => 0,
            Lane::Bulk => 1,
        }
    }

    /// The lane numbered `n` on the wire, if there is one.
    pub fn from_index(n: u8) -> Option<Lane> {
        Lane::ALL.get(usize::from(n)).copied()
    }

    /// The lane's name, for logs and folder names.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Urgent => "urgent",
            Lane::Bulk => "bulk",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The edge's positions on one lane, in HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HelloLane {
    /// The edge's outbox of this lane: its stream id, and the first sequence number it still
    /// holds.
    pub up_stream: u64,
    /// See `up_stream`.
    pub up_first: u64,
    /// The cloud-to-edge stream of this lane the edge knows (0: none), and the last sequence
    /// number it processed from it.
    pub down_stream: u64,
    /// See `down_stream`.
    pub down_seq: u64,
}

/// What the edge says first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the edge speaks. A HELLO of another version is decoded no further than
    /// this field (the other fields are left empty): the receiver refuses it with code 9.
    pub version: u8,
    /// `controller.project-id`.
    pub project_id: String,
    /// `controller.node-id`; must be the identity in the node's certificate.
    pub node_id: String,
    /// How often the edge sends a heartbeat when it has nothing else to send.
    pub heartbeat: Duration,
    /// The edge declares the link dead after this long without a frame from the cloud, so the
    /// cloud sends heartbeats well within it.
    pub read_deadline: Duration,
    /// The edge's receive window on each lane: messages it takes from the cloud ahead of its
    /// acknowledgements.
    pub window: u32,
    /// The edge's positions, per lane ([`Lane::index`]).
    pub lanes: [HelloLane; LANES],
}

/// The cloud's positions on one lane, in WELCOME.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WelcomeLane {
    /// The cloud's queue of this lane for this node: its stream id, and the first sequence
    /// number it holds.
    pub down_stream: u64,
    /// See `down_stream`.
    pub down_first: u64,
    /// The last sequence number of the edge's stream of this lane the cloud has processed: the
    /// edge resumes after it.
    pub up_seq: u64,
}

/// The cloud's answer to an accepted HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version the cloud speaks. As in [`Hello`], a WELCOME of another version is
    /// decoded no further.
    pub version: u8,
    /// The cloud drops a node that sent nothing for this long (`keepalive-interval`).
    pub keepalive: Duration,
    /// How often the cloud sends a heartbeat when it has nothing else to send.
    pub heartbeat: Duration,
    /// The cloud's receive window on each lane: messages it takes from the edge ahead of its
    /// acknowledgements.
    pub window: u32,
    /// The cloud's positions, per lane ([`Lane::index`]).
    pub lanes: [WelcomeLane; LANES],
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Edge to cloud, first frame of a link.
    Hello(Hello),
    /// Cloud to edge, the answer to an accepted HELLO.
    Welcome(Welcome),
    /// Either way: "I am alive"; sent when a side has been silent for its heartbeat interval.
    Heartbeat,
    /// Either way: one whole message of the sender's stream on `lane` (at most [`CHUNK`] bytes
    /// when the sender cuts larger ones into [`Frame::Part`]s, as hub does).
    Message {
        /// The lane.
        lane: Lane,
        /// Its sequence number in the sender's stream of that lane.
        seq: u64,
        /// The encoded [`Message`](crate::message::Message), or its last piece.
        payload: Vec<u8>,
    },
    /// Either way: a piece of message `seq` on `lane`; the piece that reaches `total` completes
    /// it. Senders cut messages over
    /// [`CHUNK`] bytes so that a large message holds up the other lane by one piece at most.
    Part {
        /// The lane.
        lane: Lane,
        /// The sequence number of the message this is a piece of.
        seq: u64,
        /// Where the piece starts in the message, in bytes: a receiver tells a repeated piece
        /// (before what it has) from a missing one (after it).
        offset: u32,
        /// The length of the whole message, in bytes.
        total: u32,
        /// The piece.
        payload: Vec<u8>,
    },
    /// Either way: every message of the receiver's peer stream on `lane` up to `seq` is safely
    /// processed.
    Ack {
        /// The lane.
        lane: Lane,
        /// The last message acknowledged.
        seq: u64,
    },
}

/// A frame waiting to be sent: [`Frame`] with HELLO and WELCOME (once per link, and more than
/// three times the size of the others) boxed, so that each slot of a queue of frames (the
/// session's, a link's) takes 48 bytes rather than 152. A queue keeps its slots once it grew, at
/// least 4 of them: 192 bytes rather than 608 in every idle node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are those of the same variants of `Frame`
pub enum CompactFrame {
    /// [`Frame::Message`].
    Message {
        lane: Lane,
        seq: u64,
        payload: Vec<u8>,
    },
    /// [`Frame::Part`].
    Part {
        lane: Lane,
        seq: u64,
        offset: u32,
        total: u32,
        payload: Vec<u8>,
    },
    /// [`Frame::Ack`].
    Ack { lane: Lane, seq: u64 },
    /// [`Frame::Heartbeat`].
    Heartbeat,
    /// Any other frame, boxed.
    Other(Box<Frame>),
}

impl CompactFrame {
    /// The payload bytes of a MESSAGE or PART; 0 for the others.
    pub fn payload_len(&self) -> usize {
        match self {
            CompactFrame::Message { payload, .. } | CompactFrame::Part { payload, .. } => {
                payload.len()
            }
            _ => 0,
        }
    }
}

impl From<Frame> for CompactFrame {
    fn from(f: Frame) -> CompactFrame {
        match f {
            Frame::Message { lane, seq, payload } => CompactFrame::Message { lane, seq, payload },
            Frame::Part {
                lane,
                seq,
                offset,
                total,
                payload,
            } => CompactFrame::Part {
                lane,
                seq,
                offset,
                total,
                payload,
            },
            Frame::Ack { lane, seq } => CompactFrame::Ack { lane, seq },
            Frame::Heartbeat => CompactFrame::Heartbeat,
            other => CompactFrame::Other(Box::new(other)),
        }
    }
}

impl From<CompactFrame> for Frame {
    fn from(f: CompactFrame) -> Frame {
        match f {
            CompactFrame::Message { lane, seq, payload } => Frame::Message { lane, seq, payload },
            CompactFrame::Part {
                lane,
                seq,
                offset,
                total,
                payload,
            } => Frame::Part {
                lane,
                seq,
                offset,
                total,
                payload,
            },
            CompactFrame::Ack { lane, seq } => Frame::Ack { lane, seq },
            CompactFrame::Heartbeat => Frame::Heartbeat,
            CompactFrame::Other(f) => *f,
        }
    }
}

/// The largest piece of a message sent in one frame (64 KiB): longer messages go as
/// [`Frame::Part`]s.
pub const CHUNK: usize = 64 << 10;

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame ends before its fields do.
    Truncated,
    /// The type byte is not a known frame type.
    UnknownType(u8),
    /// A string field is not UTF-8.
    BadString,
    /// The frame is longer than [`MAX_FRAME`](super::MAX_FRAME).
    Oversized(usize),
    /// An empty frame (no type byte).
    Empty,
    /// A WebSocket text message, where every frame is a binary message.
    Text,
    /// A lane number that is not a lane.
    UnknownLane(u8),
    /// A frame on a QUIC stream that does not carry it: anything but a bulk message (or a piece
    /// of one) on the bulk lane's stream, or a stream beyond the two the protocol opens.
    WrongStream,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated => f.write_str("truncated frame"),
            FrameError::UnknownType(t) => write!(f, "unknown frame type 0x{t:02x}"),
            FrameError::BadString => f.write_str("string field is not UTF-8"),
            FrameError::Oversized(n) => {
                write!(f, "frame of {n} bytes is over the {MAX_FRAME}-byte limit")
            }
            FrameError::Empty => f.write_str("empty frame"),
            FrameError::Text => f.write_str("text message on a binary protocol"),
            FrameError::UnknownLane(n) => write!(f, "unknown lane {n}"),
            FrameError::WrongStream => {
                f.write_str("a frame or stream where the protocol has none (QUIC)")
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameError {
    /// The close code a receiver uses when it meets this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::Oversized(_) => CloseCode::Oversized,
            _ => CloseCode::ProtocolError,
        }
    }
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Ids are validated to at most 64 bytes; anything longer is cut at a char boundary.
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// The bytes a message frame puts before its payload: type, lane, sequence number. A payload
/// with that much room to spare is framed in place ([`Frame::into_bytes`]).
pub const MESSAGE_HEADER: usize = 1 + 1 + 8;

impl Frame {
    /// Appends this frame's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Hello(h) => {
                out.push(kind::HELLO);
                out.push(h.version);
                out.extend_from_slice(&millis(h.heartbeat).to_be_bytes());
                out.extend_from_slice(&millis(h.read_deadline).to_be_bytes());
                put_str(out, &h.project_id);
                put_str(out, &h.node_id);
                out.extend_from_slice(&h.window.to_be_bytes());
                for l in &h.lanes {
                    for v in [l.up_stream, l.up_first, l.down_stream, l.down_seq] {
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                }
            }
            Frame::Welcome(w) => {
                out.push(kind::WELCOME);
                out.push(w.version);
                out.extend_from_slice(&millis(w.keepalive).to_be_bytes());
                out.extend_from_slice(&millis(w.heartbeat).to_be_bytes());
                out.extend_from_slice(&w.window.to_be_bytes());
                for l in &w.lanes {
                    for v in [l.down_stream, l.down_first, l.up_seq] {
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                }
            }
            Frame::Heartbeat => out.push(kind::HEARTBEAT),
            Frame::Message { lane, seq, payload } => {
                out.push(kind::MESSAGE);
                out.push(lane.index() as u8);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(payload);
            }
            Frame::Part {
                lane,
                seq,
                offset,
                total,
                payload,
            } => {
                out.push(kind::PART);
                out.push(lane.index() as u8);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(payload);
            }
            Frame::Ack { lane, seq } => {
                out.push(kind::ACK);
                out.push(lane.index() as u8);
                out.extend_from_slice(&seq.to_be_bytes());
            }
        }
    }

    /// Whether `kind`, a frame's first byte, is that of a [`Frame::Message`] or a [`Frame::Part`]
    /// (whose second byte is then the lane).
    pub fn is_message_kind(kind: u8) -> bool {
        kind == kind::MESSAGE || kind == kind::PART
    }

    /// This frame's bytes, in a vector of exactly their size for a message or a piece of one (no
    /// growing on the way; and `bytes::Bytes::from` then takes it without an allocation of its
    /// own, as WebSocket writers do).
    pub fn encode(&self) -> Vec<u8> {
        let size = match self {
            Frame::Message { payload, .. } => MESSAGE_HEADER + payload.len(),
            Frame::Part { payload, .. } => 18 + payload.len(),
            _ => 16,
        };
        let mut out = Vec::with_capacity(size);
        self.encode_into(&mut out);
        out
    }

    /// This frame's bytes, as [`encode`](Self::encode) gives them, made in a message's own
    /// payload when it has room for [`MESSAGE_HEADER`] more bytes (the header goes in front,
    /// the payload moved after it) rather than in a new vector.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Frame::Message {
                lane,
                seq,
                mut payload,
            } if payload.capacity() - payload.len() >= MESSAGE_HEADER => {
                let n = payload.len();
                payload.resize(n + MESSAGE_HEADER, 0);
                payload.copy_within(..n, MESSAGE_HEADER);
                payload[0] = kind::MESSAGE;
                payload[1] = lane.index() as u8;
                payload[2..MESSAGE_HEADER].copy_from_slice(&seq.to_be_bytes());
                payload
            }
            other => other.encode(),
        }
    }

    /// [`decode`](Self::decode) of bytes it may keep: a message's payload is `bytes` itself,
    /// the frame's header moved out of the way, rather than a copy of the rest.
    pub fn decode_owned(mut bytes: Vec<u8>) -> Result<Frame, FrameError> {
        if bytes.first() != Some(&kind::MESSAGE) || bytes.len() > MAX_FRAME {
            return Frame::decode(&bytes);
        }
        let mut r = Reader(&bytes[1..]);
        let lane = r.lane()?;
        let seq = r.u64()?;
        bytes.drain(..bytes.len() - r.0.len());
        Ok(Frame::Message {
            lane,
            seq,
            payload: bytes,
        })
    }

    /// Decodes one whole frame. Bytes after the fields a type defines are ignored, so later
    /// versions can append fields.
    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        if bytes.len() > MAX_FRAME {
            return Err(FrameError::Oversized(bytes.len()));
        }
        let (&t, body) = bytes.split_first().ok_or(FrameError::Empty)?;
        let mut r = Reader(body);
        Ok(match t {
            kind::HELLO => Frame::Hello(r.hello()?),
            kind::WELCOME => Frame::Welcome(r.welcome()?),
            kind::HEARTBEAT => Frame::Heartbeat,
            kind::MESSAGE => Frame::Message {
                lane: r.lane()?,
                seq: r.u64()?,
                payload: r.0.to_vec(),
            },
            kind::PART => Frame::Part {
                lane: r.lane()?,
                seq: r.u64()?,
                offset: r.u32()?,
                total: r.u32()?,
                payload: r.0.to_vec(),
            },
            kind::ACK => Frame::Ack {
                lane: r.lane()?,
                seq: r.u64()?,
            },
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn millis(&mut self) -> Result<Duration, FrameError> {
        Ok(Duration::from_millis(u64::from(self.u32()?)))
    }
    fn str(&mut self) -> Result<String, FrameError> {
        let n = usize::from(self.u8()?);
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| FrameError::BadString)
    }
    fn lane(&mut self) -> Result<Lane, FrameError> {
        let n = self.u8()?;
        Lane::from_index(n).ok_or(FrameError::UnknownLane(n))
    }
    fn hello(&mut self) -> Result<Hello, FrameError> {
        let mut h = Hello {
            version: self.u8()?,
            project_id: String::new(),
            node_id: String::new(),
            heartbeat: Duration::ZERO,
            read_deadline: Duration::ZERO,
            window: 0,
            lanes: [HelloLane::default(); LANES],
        };
        if h.version != VERSION {
            // Another version's fields may be laid out otherwise: the version is all that is
            // read, and the receiver refuses it by that.
            return Ok(h);
        }
        h.heartbeat = self.millis()?;
        h.read_deadline = self.millis()?;
        h.project_id = self.str()?;
        h.node_id = self.str()?;
        h.window = self.u32()?;
        for l in &mut h.lanes {
            *l = HelloLane {
                up_stream: self.u64()?,
                up_first: self.u64()?,
                down_stream: self.u64()?,
                down_seq: self.u64()?,
            };
        }
        Ok(h)
    }
    fn welcome(&mut self) -> Result<Welcome, FrameError> {
        let mut w = Welcome {
            version: self.u8()?,
            keepalive: Duration::ZERO,
            heartbeat: Duration::ZERO,
            window: 0,
            lanes: [WelcomeLane::default(); LANES],
        };
        if w.version != VERSION {
            return Ok(w);
        }
        w.keepalive = self.millis()?;
        w.heartbeat = self.millis()?;
        w.window = self.u32()?;
        for l in &mut w.lanes {
            *l = WelcomeLane {
                down_stream: self.u64()?,
                down_first: self.u64()?,
                up_seq: self.u64()?,
            };
        }
        Ok(w)
    }
}

/// Appends `frame` to `out` behind its 4-byte big-endian length, as QUIC streams carry it.
pub fn encode_len_prefixed(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    frame.encode_into(out);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Splits a byte stream into length-prefixed frames. Feed it bytes as they arrive; it holds the
/// incomplete frame plus at most what the last [`push`](Self::push) brought, and refuses a length
/// over [`MAX_FRAME`] at once. Frames are returned at their exact size, and each received byte is
/// copied a bounded number of times however many frames one push brings.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    /// Where the bytes not yet returned as a frame start in `buf`.
    start: usize,
}

impl StreamDecoder {
    /// Adds received bytes (first dropping those already returned as frames).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// How many more bytes the next frame needs before [`next_frame`](Self::next_frame) can return
    /// it (at least 1).
    pub fn wanted(&self) -> usize {
        let unread = self.unread();
        if unread.len() < 4 {
            return 4 - unread.len();
        }
        let len = u32::from_be_bytes(unread[..4].try_into().expect("4 bytes")) as usize;
        (4 + len).saturating_sub(unread.len()).max(1)
    }

    /// The next whole frame's bytes, if one has arrived. Call again until it returns `Ok(None)`.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let unread = self.unread();
        if unread.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(unread[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::Oversized(len));
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if unread.len() < 4 + len {
            return Ok(None);
        }
        let frame = if self.start == 0 && self.buf.len() == 4 + len {
            // The buffer is this frame: hand it over rather than copy it (a large message).
            let mut frame = std::mem::take(&mut self.buf);
            frame.drain(..4);
            frame
        } else {
            let frame = unread[4..4 + len].to_vec();
            self.start += 4 + len;
            frame
        };
        Ok(Some(frame))
    }

    /// Bytes received but not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Frame {
        Frame::Hello(Hello {
            version: VERSION,
            project_id: "p".into(),
            node_id: "edge-node".into(),
            heartbeat: Duration::from_secs(15),
            read_deadline: Duration::from_millis(1500),
            window: 256,
            lanes: [
                HelloLane {
                    up_stream: 0x0102030405060708,
                    up_first: 1,
                    down_stream: 0,
                    down_seq: 0,
                },
                HelloLane {
                    up_stream: 0x1112131415161718,
                    up_first: 1,
                    down_stream: 0,
                    down_seq: 0,
                },
            ],
        })
    }

    #[test]
    fn frames_made_in_place_are_the_encoded_ones() {
        let message = |payload: Vec<u8>| Frame::Message {
            lane: Lane::Urgent,
            seq: 0x0102_0304_0506_0708,
            payload,
        };
        for len in [0, 1, 9, 10, 11, 300] {
            let content: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut roomy = Vec::with_capacity(len + MESSAGE_HEADER);
            roomy.extend_from_slice(&content);
            let at = roomy.as_ptr();
            let bytes = message(roomy).into_bytes();
            assert_eq!(bytes, message(content.clone()).encode(), "{len} bytes");
            assert_eq!(bytes.as_ptr(), at, "framed in its own payload");
            let tight = content.clone();
            assert_eq!(message(tight).into_bytes(), message(content).encode());
        }
        for f in [hello(), Frame::Heartbeat] {
            assert_eq!(f.clone().into_bytes(), f.encode());
        }
    }

    #[test]
    fn decoding_owned_bytes_reads_the_same_frames() {
        let frames = [
            Frame::Message {
                lane: Lane::Urgent,
                seq: 7,
                payload: b"payload".to_vec(),
            },
            Frame::Message {
                lane: Lane::Bulk,
                seq: u64::MAX,
                payload: Vec::new(),
            },
            hello(),
            Frame::Ack {
                lane: Lane::Bulk,
                seq: 3,
            },
        ];
        for f in frames {
            let bytes = f.encode();
            assert_eq!(Frame::decode_owned(bytes.clone()), Ok(f.clone()));
            for cut in 0..bytes.len() {
                assert_eq!(
                    Frame::decode_owned(bytes[..cut].to_vec()),
                    Frame::decode(&bytes[..cut]),
                    "{f:?} cut at {cut}"
                );
            }
        }
        let mut bad = Frame::Message {
            lane: Lane::Bulk,
            seq: 1,
            payload: Vec::new(),
        }
        .encode();
        bad[1] = 9;
        assert_eq!(Frame::decode_owned(bad.clone()), Frame::decode(&bad));
        assert!(Frame::decode(&bad).is_err());
    }

    #[test]
    fn round_trips() {
        let welcome = Frame::Welcome(Welcome {
            version: VERSION,
            keepalive: Duration::from_secs(30),
            heartbeat: Duration::from_millis(500),
            window: 64,
            lanes: [
                WelcomeLane {
                    down_stream: 9,
                    down_first: 100,
                    up_seq: 42,
                },
                WelcomeLane {
                    down_stream: 10,
                    down_first: 1,
                    up_seq: 0,
                },
            ],
        });
        let message = Frame::Message {
            lane: Lane::Bulk,
            seq: 7,
            payload: b"payload".to_vec(),
        };
        let part = Frame::Part {
            lane: Lane::Urgent,
            seq: 8,
            offset: 65536,
            total: 70000,
            payload: b"piece".to_vec(),
        };
        for f in [
            hello(),
            welcome,
            Frame::Heartbeat,
            message,
            part,
            Frame::Ack {
                lane: Lane::Bulk,
                seq: u64::MAX,
            },
        ] {
            let bytes = f.encode();
            assert_eq!(Frame::decode(&bytes), Ok(f.clone()));
            if matches!(f, Frame::Message { .. } | Frame::Part { .. }) {
                assert_eq!(
                    bytes.capacity(),
                    bytes.len(),
                    "{f:?} in a vector of its size"
                );
            }
        }
    }

    #[test]
    fn hello_layout_is_as_documented() {
        let bytes = hello().encode();
        let mut want = vec![0x01, 2, 0, 0, 0x3a, 0x98, 0, 0, 0x05, 0xdc, 1, b'p', 9];
        want.extend_from_slice(b"edge-node");
        want.extend_from_slice(&[0, 0, 1, 0]);
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0; 16]);
        assert_eq!(bytes, want);
        let ack = Frame::Ack {
            lane: Lane::Bulk,
            seq: 258,
        };
        assert_eq!(ack.encode(), vec![0x11, 1, 0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn another_version_is_read_no_further_than_its_number() {
        // A version-1 HELLO: no lanes, and the fields laid out otherwise.
        let mut v1 = vec![
            0x01, 1, 0, 0, 0x3a, 0x98, 0, 0, 0x05, 0xdc, 1, b'p', 1, b'n',
        ];
        v1.extend_from_slice(&[0, 0, 1, 0]);
        v1.extend_from_slice(&[0; 32]);
        match Frame::decode(&v1) {
            Ok(Frame::Hello(h)) => assert_eq!((h.version, h.node_id.as_str()), (1, "")),
            other => panic!("{other:?}"),
        }
        match Frame::decode(&[0x02, 7]) {
            Ok(Frame::Welcome(w)) => assert_eq!(w.version, 7),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Frame::decode(&[0x11, 2, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(FrameError::UnknownLane(2))
        );
    }

    #[test]
    fn refuses_bad_bytes() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(Frame::decode(&[0x7f]), Err(FrameError::UnknownType(0x7f)));
        let full = hello().encode();
        for cut in 1..full.len() {
            assert_eq!(
                Frame::decode(&full[..cut]),
                Err(FrameError::Truncated),
                "cut at {cut}"
            );
        }
        let mut bad = full.clone();
        bad[21] = 0xff; // the last byte of the node id

        assert_eq!(Frame::decode(&bad), Err(FrameError::BadString));
        // Later versions may append fields, to every frame type but MESSAGE (whose content runs
        // to the end): docs/protocol.md section 2.
        let mut longer = full;
        longer.extend_from_slice(b"more");
        assert_eq!(Frame::decode(&longer), Ok(hello()));
        assert_eq!(Frame::decode(&[0x03, 1, 2, 3]), Ok(Frame::Heartbeat));
        let seven = Frame::Ack {
            lane: Lane::Urgent,
            seq: 7,
        };
        let mut ack = seven.encode();
        ack.extend_from_slice(b"more");
        assert_eq!(Frame::decode(&ack), Ok(seven));
        // The close codes section 1.2 gives for a bad length.
        assert_eq!(FrameError::Empty.close_code(), CloseCode::ProtocolError);
        assert_eq!(
            FrameError::Oversized(MAX_FRAME + 1).close_code(),
            CloseCode::Oversized
        );
    }

    #[test]
    fn stream_decoder_splits_and_bounds() {
        let mut wire = Vec::new();
        encode_len_prefixed(&hello(), &mut wire);
        encode_len_prefixed(&Frame::Heartbeat, &mut wire);
        let mut d = StreamDecoder::default();
        let mut got = Vec::new();
        for b in &wire {
            // One byte at a time: never more than asked for.
            assert!(d.wanted() >= 1);
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(Frame::decode(&f).unwrap());
            }
        }
        assert_eq!(got, vec![hello(), Frame::Heartbeat]);
        assert_eq!(d.pending(), 0);

        let mut huge = StreamDecoder::default();
        huge.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            huge.next_frame(),
            Err(FrameError::Oversized(u32::MAX as usize))
        );
        let mut empty = StreamDecoder::default();
        empty.push(&[0, 0, 0, 0]);
        assert_eq!(empty.next_frame(), Err(FrameError::Empty));
    }

    #[test]
    fn stream_decoder_returns_frames_at_their_size_from_a_large_push() {
        // A read may bring thousands of small frames at once (quinn hands over merged chunks):
        // each comes out holding its own bytes only, not the rest of the read.
        let mut wire = Vec::new();
        for _ in 0..10_000 {
            encode_len_prefixed(&Frame::Heartbeat, &mut wire);
        }
        encode_len_prefixed(&hello(), &mut wire);
        let cut = wire.len() - 3;
        let mut d = StreamDecoder::default();
        d.push(&wire[..cut]);
        let mut n = 0;
        while let Some(f) = d.next_frame().unwrap() {
            assert_eq!(f.capacity(), f.len(), "frame {n} holds more than its bytes");
            assert_eq!(Frame::decode(&f).unwrap(), Frame::Heartbeat);
            n += 1;
        }
        assert_eq!(n, 10_000);
        assert_eq!(d.wanted(), 3);
        d.push(&wire[cut..]);
        assert_eq!(
            Frame::decode(&d.next_frame().unwrap().unwrap()),
            Ok(hello())
        );
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn close_codes_are_stable() {
        for (i, c) in CloseCode::ALL.iter().enumerate() {
            assert_eq!(c.code() as usize, i + 1);
            assert_eq!(CloseCode::from_code(c.code()), Some(*c));
        }
        assert_eq!(CloseCode::from_code(0), None);
    }
}
