//! MQTT packets, version-neutral: what the MQTT front-end's session logic reads and writes,
//! whichever of MQTT 3.1.1 (protocol level 4, also 3.1's level 3) and MQTT 5.0 (level 5) the
//! client speaks. The bytes are the `mqtt-proto` crate's business; this module frames them
//! (a packet's size is known, and bounded, from its fixed header before its body is buffered),
//! learns the client's version from its CONNECT, and maps both versions' packets to one shape.
//!
//! Sans-IO: [`Decoder::decode`] takes bytes and returns packets; [`encode`] appends a packet's
//! bytes to a buffer.
//!
//! What the decoder refuses beyond `mqtt-proto`'s own checks (reserved flag bits, QoS 3, packet
//! identifier 0, UTF-8, topic name and filter syntax, reason codes, duplicate properties), each a
//! MUST of the specifications a server relies on:
//! - a packet whose fields do not fill its Remaining Length exactly, or a PINGREQ, PINGRESP or
//!   MQTT 3.1.1 DISCONNECT with a body (MQTT 5.0 section 2.1.4);
//! - a string holding U+0000 (MQTT 5.0 section 1.5.4, MQTT 3.1.1 MQTT-1.5.3-2);
//! - a CONNECT with Will Retain but no will (MQTT-3.1.2-15 / v5 MQTT-3.1.2-13), an MQTT 3.1.1
//!   CONNECT with a password but no user name (MQTT-3.1.2-22), an empty will topic or Response
//!   Topic (MQTT-4.7.3-1), a v5 Receive Maximum or Maximum Packet Size of 0 or Authentication
//!   Data without a method (sections 3.1.2.11.3, 3.1.2.11.4, 3.1.2.11.10: Protocol Error);
//! - an MQTT 3.1.1 PUBLISH with an empty topic (MQTT-4.7.3-1) or QoS 0 and DUP (MQTT-3.3.1-2);
//! - a v5 PUBLISH from the client with a Subscription Identifier (MQTT-3.3.4-6), a v5 SUBSCRIBE
//!   with Subscription Identifier 0 (section 3.8.2.1.2) or No Local on a shared subscription
//!   (MQTT-3.8.3-4).
//!
//! The session checks the rest: topic aliases, what a client must not send at all (CONNACK,
//! SUBACK, UNSUBACK, PINGRESP decode as themselves), wildcards' and `$` topics' meaning.

use std::sync::Arc;

use bytes::Bytes;
use mqtt_proto::{Pid, PollHeader, QoS, QosPid, TopicFilter, TopicName, v3, v5};

/// The protocol a client speaks, from its CONNECT's protocol level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4), and MQTT 3.1 (level 3, protocol name `MQIsdp`).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// A user property (MQTT 5.0 section 3.3.2.3.7): a name and a value, both UTF-8.
pub type UserProperty = (String, String);

/// The properties of a PUBLISH (MQTT 5.0 section 3.3.2.3) and of a will (section 3.1.3.2); all
/// absent for MQTT 3.1.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProps {
    /// Payload Format Indicator: `Some(true)` when the payload is UTF-8 text (a v5 payload that
    /// says so and is not is refused by the decoder as malformed).
    pub payload_utf8: Option<bool>,
    /// Message Expiry Interval, in seconds.
    pub message_expiry: Option<u32>,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic: where the answer to this request goes (a topic name: never empty, no
    /// wildcards).
    pub response_topic: Option<String>,
    /// Correlation Data: the requester's tag, returned with the answer.
    pub correlation_data: Option<Bytes>,
    /// User Properties, in order.
    pub user: Vec<UserProperty>,
    /// Subscription Identifiers of the subscriptions that matched (server to client only: the
    /// decoder refuses a client's PUBLISH that carries one), each 1 to 268435455.
    pub subscription_ids: Vec<u32>,
    /// Topic Alias (section 3.3.2.3.4).
    pub topic_alias: Option<u16>,
}

/// A PUBLISH packet (MQTT 3.1.1 section 3.3, MQTT 5.0 section 3.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    /// The topic name, without wildcards or U+0000. Empty only from a v5 client, which must then
    /// give a Topic Alias (the session resolves aliases and refuses an empty topic without one).
    pub topic: String,
    /// 0, 1 or 2.
    pub qos: u8,
    /// The packet identifier: `Some` exactly when `qos` > 0, never 0.
    pub pid: Option<u16>,
    /// The RETAIN flag.
    pub retain: bool,
    /// The DUP flag: a re-delivery of a QoS 1 or 2 PUBLISH (MQTT 3.1.1 refuses it on QoS 0).
    pub dup: bool,
    /// The application message.
    pub payload: Bytes,
    /// The v5 properties.
    pub props: PublishProps,
}

/// The will of a CONNECT (MQTT 5.0 section 3.1.2.5, 3.1.3.2-3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Will {
    /// The Will Topic, a topic name (never empty).
    pub topic: String,
    /// The Will Payload.
    pub payload: Bytes,
    /// Will QoS: 0, 1 or 2.
    pub qos: u8,
    /// Will Retain.
    pub retain: bool,
    /// The Will Properties (v5); the will has no topic alias nor subscription identifiers.
    pub props: PublishProps,
    /// Will Delay Interval, in seconds (MQTT 5.0 section 3.1.3.2.2).
    pub delay: Option<u32>,
}

/// A CONNECT packet (MQTT 5.0 section 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol the client speaks (3.1 decodes as [`Version::V311`], and encodes as 3.1.1).
    pub version: Version,
    /// May be empty (the server assigns one, or refuses: section 3.1.3.1).
    pub client_id: String,
    /// MQTT 3.1.1's Clean Session, MQTT 5.0's Clean Start.
    pub clean_start: bool,
    /// Keep Alive, in seconds; 0 turns the mechanism off.
    pub keep_alive: u16,
    /// User Name.
    pub username: Option<String>,
    /// Password (binary).
    pub password: Option<Bytes>,
    /// The will, published when the connection ends without a DISCONNECT.
    pub will: Option<Will>,
    /// Session Expiry Interval, in seconds (v5; `u32::MAX` never expires).
    pub session_expiry: Option<u32>,
    /// Receive Maximum: QoS 1 and 2 publishes the client takes unacknowledged (v5; never 0).
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size the client accepts, in bytes (v5; never 0).
    pub maximum_packet_size: Option<u32>,
    /// Topic Alias Maximum the client accepts from the server (v5).
    pub topic_alias_maximum: Option<u16>,
    /// Request Response Information (v5; absent means false).
    pub request_response_info: Option<bool>,
    /// Request Problem Information (v5; absent means true).
    pub request_problem_info: Option<bool>,
    /// Authentication Method (enhanced authentication, section 4.12).
    pub auth_method: Option<String>,
    /// User Properties (v5), in order.
    pub user: Vec<UserProperty>,
}

/// The properties of a CONNACK (MQTT 5.0 section 3.2.2.3); ignored for MQTT 3.1.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnackProps {
    /// Session Expiry Interval, in seconds, when the server overrides the client's.
    pub session_expiry: Option<u32>,
    /// Receive Maximum of the server.
    pub receive_maximum: Option<u16>,
    /// Maximum QoS: 0 or 1 (2 is written as absent, which means 2).
    pub maximum_qos: Option<u8>,
    /// Retain Available.
    pub retain_available: Option<bool>,
    /// Maximum Packet Size the server accepts, in bytes.
    pub maximum_packet_size: Option<u32>,
    /// Assigned Client Identifier, when the client sent an empty one.
    pub assigned_client_id: Option<String>,
    /// Topic Alias Maximum the server accepts.
    pub topic_alias_maximum: Option<u16>,
    /// Reason String.
    pub reason_string: Option<String>,
    /// Wildcard Subscription Available.
    pub wildcard_available: Option<bool>,
    /// Subscription Identifiers Available.
    pub subscription_ids_available: Option<bool>,
    /// Shared Subscription Available.
    pub shared_available: Option<bool>,
    /// Server Keep Alive, in seconds.
    pub server_keep_alive: Option<u16>,
    /// Response Information.
    pub response_info: Option<String>,
}

/// A CONNACK. `code` is an MQTT 5.0 reason code (section 3.2.2.2); for MQTT 3.1.1 it is
/// mapped to the nearest return code (section 3.2.2.3: 0 accepted, 1 unacceptable protocol
/// version, 2 identifier rejected, 3 server unavailable, 4 bad user name or password,
/// 5 not authorized): 0x84 -> 1, 0x85 -> 2, 0x86 -> 4, 0x87 and 0x8C -> 5, any other failure -> 3.
/// A v5 CONNACK takes only the codes of section 3.2.2.2 (0x8B Server Shutting Down is not one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connack {
    /// Session Present.
    pub session_present: bool,
    /// The v5 reason code.
    pub code: u8,
    /// The v5 properties.
    pub props: ConnackProps,
}

/// Subscription Options (MQTT 5.0 section 3.8.3.1); MQTT 3.1.1 has only the QoS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS.
    pub qos: u8,
    /// No Local: not sent back the client's own publishes.
    pub no_local: bool,
    /// Retain As Published: forwarded messages keep their RETAIN flag.
    pub retain_as_published: bool,
    /// Retain Handling: 0 send retained at subscribe, 1 only if the subscription is new, 2 never.
    pub retain_handling: u8,
}

/// A SUBSCRIBE (MQTT 5.0 section 3.8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscribe {
    /// The packet identifier (never 0).
    pub pid: u16,
    /// Subscription Identifier (v5; 1 to 268435455).
    pub subscription_id: Option<u32>,
    /// The topic filters (valid filters: wildcards only as whole levels, never empty), at least one.
    pub filters: Vec<(String, SubOptions)>,
    /// User Properties (v5), in order.
    pub user: Vec<UserProperty>,
}

/// An acknowledgement carrying one reason code per topic filter: SUBACK, UNSUBACK (MQTT 5.0
/// sections 3.9 and 3.11). For MQTT 3.1.1 a SUBACK's codes above 2 become 0x80 and an UNSUBACK
/// carries none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterAck {
    /// The packet identifier of the SUBSCRIBE or UNSUBSCRIBE.
    pub pid: u16,
    /// One v5 reason code per filter, in the request's order.
    pub codes: Vec<u8>,
    /// Reason String (v5).
    pub reason_string: Option<String>,
}

/// An acknowledgement of a QoS 1 or 2 PUBLISH: PUBACK, PUBREC, PUBREL, PUBCOMP (MQTT 5.0 sections
/// 3.4-3.7). `code` is the v5 reason code (0 success); MQTT 3.1.1 carries none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PubAck {
    /// The packet identifier of the PUBLISH.
    pub pid: u16,
    /// The v5 reason code, one the packet type takes (sections 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1).
    pub code: u8,
    /// Reason String (v5).
    pub reason_string: Option<String>,
}

/// A DISCONNECT (MQTT 5.0 section 3.14); MQTT 3.1.1's carries nothing (a server never sends it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// The v5 reason code (0 normal disconnection).
    pub code: u8,
    /// Session Expiry Interval, in seconds, replacing the CONNECT's.
    pub session_expiry: Option<u32>,
    /// Reason String (v5).
    pub reason_string: Option<String>,
}

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (section 3.1).
    Connect(Box<Connect>),
    /// CONNACK (section 3.2).
    Connack(Connack),
    /// PUBLISH (section 3.3).
    Publish(Publish),
    /// PUBACK (section 3.4).
    Puback(PubAck),
    /// PUBREC (section 3.5).
    Pubrec(PubAck),
    /// PUBREL (section 3.6).
    Pubrel(PubAck),
    /// PUBCOMP (section 3.7).
    Pubcomp(PubAck),
    /// SUBSCRIBE (section 3.8).
    Subscribe(Subscribe),
    /// SUBACK (section 3.9).
    Suback(FilterAck),
    /// UNSUBSCRIBE (section 3.10).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (section 3.11).
    Unsuback(FilterAck),
    /// PINGREQ (section 3.12).
    Pingreq,
    /// PINGRESP (section 3.13).
    Pingresp,
    /// DISCONNECT (section 3.14).
    Disconnect(Disconnect),
    /// AUTH (v5 section 3.15): its reason code; hub supports no enhanced authentication.
    Auth(u8),
}

/// An UNSUBSCRIBE (MQTT 5.0 section 3.10).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The packet identifier (never 0).
    pub pid: u16,
    /// The topic filters, at least one.
    pub filters: Vec<String>,
}

/// MQTT 5.0 reason codes this hub sends (section 2.4).
pub mod reason {
    /// Success, Normal disconnection, Granted QoS 0.
    pub const SUCCESS: u8 = 0x00;
    /// No matching subscribers (PUBACK, PUBREC).
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    /// No subscription existed (UNSUBACK).
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Unspecified error.
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    /// Malformed Packet.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// Protocol Error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    /// Unsupported Protocol Version (CONNACK).
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    /// Client Identifier not valid (CONNACK).
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    /// Bad User Name or Password (CONNACK).
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    /// Not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// Server unavailable (CONNACK).
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    /// Server busy.
    pub const SERVER_BUSY: u8 = 0x89;
    /// Server shutting down (DISCONNECT).
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    /// Bad authentication method (CONNACK).
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    /// Keep Alive timeout (DISCONNECT).
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// Session taken over (DISCONNECT).
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// Topic Filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// Topic Name invalid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// Packet Identifier in use.
    pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
    /// Packet Identifier not found (PUBREL, PUBCOMP).
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    /// Receive Maximum exceeded (DISCONNECT).
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// Topic Alias invalid (DISCONNECT).
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// Packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// Quota exceeded.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    /// Retain not supported.
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    /// QoS not supported.
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    /// Shared Subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    /// Subscription Identifiers not supported.
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    /// Wildcard Subscriptions not supported.
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;
}

/// Why bytes from a client are not a packet this hub takes. Each maps to the v5 reason code of
/// the DISCONNECT (or CONNACK, for the first packet) the client is sent before it is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The fixed header announces a packet of `size` bytes, over `max` (MQTT 5.0 section
    /// 3.2.2.3.6: reason 0x95 Packet Too Large). Known before the body is read.
    TooLarge {
        /// The packet's whole size, fixed header included, in bytes.
        size: usize,
        /// The decoder's limit, in bytes.
        max: usize,
    },
    /// The bytes break the packet's syntax (reason 0x81 Malformed Packet).
    Malformed(String),
    /// The first packet is not a CONNECT, or a second CONNECT came (section 3.1: reason 0x82
    /// Protocol Error); also the other breaches the specification calls Protocol Errors (a
    /// property given twice, an empty SUBSCRIBE, ...).
    Protocol(String),
    /// The CONNECT names a protocol level this hub does not speak (reason 0x84; for MQTT 3.1.1
    /// return code 1).
    UnsupportedVersion(u8),
}

impl DecodeError {
    /// The MQTT 5.0 reason code for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::UnsupportedVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge { size, max } => {
                write!(f, "packet of {size} bytes is over the {max}-byte limit")
            }
            DecodeError::Malformed(why) => write!(f, "malformed packet: {why}"),
            DecodeError::Protocol(why) => write!(f, "protocol error: {why}"),
            DecodeError::UnsupportedVersion(level) => {
                write!(f, "unsupported protocol level {level}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// The largest Remaining Length, what a four-byte Variable Byte Integer holds (MQTT 5.0 section
/// 1.5.5).
const MAX_REMAINING: usize = 268_435_455;

/// The largest UTF-8 string or binary field: its length is two bytes (MQTT 5.0 sections 1.5.4,
/// 1.5.6).
const MAX_FIELD: usize = 65_535;

/// Splits a client's byte stream into packets.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: Option<Version>,
    max_packet_bytes: usize,
}

impl Decoder {
    /// A decoder for a new connection: its first packet must be a CONNECT; no packet may be
    /// larger than `max_packet_bytes` in all (fixed header included).
    pub fn new(max_packet_bytes: usize) -> Decoder {
        Decoder {
            version: None,
            max_packet_bytes,
        }
    }

    /// The version the client's CONNECT named, once it was decoded.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Decodes the packet at the front of `buf`: `Ok(None)` while `buf` holds less than a whole
    /// packet ([`needed`](Self::needed) then says how many bytes it takes), else the packet and
    /// how many bytes of `buf` it took. A packet larger than the limit is refused as soon as its
    /// fixed header is complete; a first packet other than CONNECT (or a second CONNECT) as soon
    /// as its first byte is there. After an error the connection is to be closed: the decoder
    /// does not resynchronise.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Packet, usize)>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let connect = first >> 4 == 1;
        match self.version {
            None if !connect => {
                return Err(DecodeError::Protocol(format!(
                    "the first packet is a {}, not a CONNECT",
                    type_name(first)
                )));
            }
            Some(_) if connect => {
                return Err(DecodeError::Protocol("a second CONNECT".into()));
            }
            _ => {}
        }
        let Some((header_len, remaining)) = fixed_header(buf)? else {
            return Ok(None);
        };
        let size = header_len + remaining;
        if size > self.max_packet_bytes {
            return Err(DecodeError::TooLarge {
                size,
                max: self.max_packet_bytes,
            });
        }
        let Some(whole) = buf.get(..size) else {
            return Ok(None);
        };
        let body = &whole[header_len..];
        let packet = match self.version {
            Some(version) => decode_body(version, first, body)?,
            None => {
                let version = protocol_version(body)?;
                let packet = decode_body(version, first, body)?;
                self.version = Some(version);
                packet
            }
        };
        Ok(Some((packet, size)))
    }

    /// How many bytes the packet at the front of `buf` takes in all, once its fixed header is
    /// complete (at most 5 bytes); `None` before, and for a header [`decode`](Self::decode)
    /// refuses. Never more than the limit (a larger packet is an error of `decode`).
    pub fn needed(&self, buf: &[u8]) -> Option<usize> {
        let (header_len, remaining) = fixed_header(buf).ok()??;
        let size = header_len + remaining;
        (size <= self.max_packet_bytes).then_some(size)
    }
}

/// The fixed header at the front of `buf`: its own length (2 to 5 bytes) and the Remaining
/// Length; `None` until it is complete. A fourth length byte that announces a fifth is
/// malformed (MQTT 5.0 section 1.5.5, MQTT 3.1.1 section 2.2.3).
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    Err(DecodeError::Malformed(
        "the remaining length takes more than 4 bytes".into(),
    ))
}

/// The name of the packet type in `first`'s high nibble, for messages.
fn type_name(first: u8) -> &'static str {
    const NAMES: [&str; 16] = [
        "reserved type 0",
        "CONNECT",
        "CONNACK",
        "PUBLISH",
        "PUBACK",
        "PUBREC",
        "PUBREL",
        "PUBCOMP",
        "SUBSCRIBE",
        "SUBACK",
        "UNSUBSCRIBE",
        "UNSUBACK",
        "PINGREQ",
        "PINGRESP",
        "DISCONNECT",
        "AUTH",
    ];
    NAMES[usize::from(first >> 4)]
}

/// The version a CONNECT's body names: protocol name `MQTT` with level 4 or 5, or `MQIsdp`
/// with level 3 (MQTT 5.0 sections 3.1.2.1-2, MQTT 3.1.1 sections 3.1.2.1-2).
fn protocol_version(body: &[u8]) -> Result<Version, DecodeError> {
    let short =
        || DecodeError::Malformed("CONNECT shorter than its protocol name and level".into());
    let len = match body {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => return Err(short()),
    };
    let name = body.get(2..2 + len).ok_or_else(short)?;
    let level = *body.get(2 + len).ok_or_else(short)?;
    match (name, level) {
        (b"MQTT", 4) | (b"MQIsdp", 3) => Ok(Version::V311),
        (b"MQTT", 5) => Ok(Version::V5),
        (b"MQTT" | b"MQIsdp", level) => Err(DecodeError::UnsupportedVersion(level)),
        _ => Err(DecodeError::Protocol(clip(format!(
            "protocol name {:?} is not MQTT",
            String::from_utf8_lossy(name)
        )))),
    }
}

/// Decodes one whole packet's body (`body`: exactly its Remaining Length of bytes).
fn decode_body(version: Version, first: u8, body: &[u8]) -> Result<Packet, DecodeError> {
    let remaining = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let packet = match version {
        Version::V311 => {
            let header = v3::Header::new_with(first, remaining, remaining + 5).map_err(v3_error)?;
            let packet = match header.build_empty_packet() {
                Some(packet) => empty_body(packet, body)?,
                None => {
                    let mut offset = 0;
                    let packet = header.decode_buffer(body, &mut offset).map_err(v3_error)?;
                    whole_body(offset, body)?;
                    packet
                }
            };
            from_v3(packet, body)?
        }
        Version::V5 => {
            let header = v5::Header::new_with(first, remaining, remaining + 5).map_err(v5_error)?;
            let packet = match header.build_empty_packet() {
                Some(packet) => empty_body(packet, body)?,
                None => {
                    let mut offset = 0;
                    let packet = header.decode_buffer(body, &mut offset).map_err(v5_error)?;
                    whole_body(offset, body)?;
                    packet
                }
            };
            from_v5(packet, body)?
        }
    };
    Ok(packet)
}

/// A packet `mqtt-proto` builds from its fixed header alone (PINGREQ, PINGRESP, an empty v5
/// DISCONNECT or AUTH, a 3.1.1 DISCONNECT): its Remaining Length must be 0 (MQTT 5.0 sections
/// 3.12.1, 3.13.1; MQTT 3.1.1 section 3.14.1).
fn empty_body<P>(packet: P, body: &[u8]) -> Result<P, DecodeError> {
    if body.is_empty() {
        Ok(packet)
    } else {
        Err(DecodeError::Malformed(format!(
            "a packet without a body has a remaining length of {}",
            body.len()
        )))
    }
}

/// The fields took the whole Remaining Length (`offset` bytes of `body`).
fn whole_body(offset: usize, body: &[u8]) -> Result<(), DecodeError> {
    if offset == body.len() {
        Ok(())
    } else {
        Err(DecodeError::Malformed(format!(
            "{} bytes after the packet's fields",
            body.len().saturating_sub(offset)
        )))
    }
}

/// Shortens an error message that quotes the client's bytes.
fn clip(mut message: String) -> String {
    const MAX: usize = 160;
    if message.len() > MAX {
        let mut end = MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

fn v3_error(e: mqtt_proto::Error) -> DecodeError {
    match e {
        // MQTT-3.8.3-3, MQTT-3.10.3-2 (v5 MQTT-3.8.3-2, MQTT-3.10.3-2): a protocol violation.
        mqtt_proto::Error::EmptySubscription => {
            DecodeError::Protocol("a SUBSCRIBE or UNSUBSCRIBE without topic filters".into())
        }
        e if e.is_eof() => DecodeError::Malformed("fields run past the remaining length".into()),
        e => DecodeError::Malformed(clip(e.to_string())),
    }
}

fn v5_error(e: v5::ErrorV5) -> DecodeError {
    match e {
        v5::ErrorV5::Common(e) => v3_error(e),
        // "It is a Protocol Error to include ... more than once", "... a value other than 0 or 1"
        // (MQTT 5.0 section 3.1.2.11 and the like).
        e @ (v5::ErrorV5::DuplicatedProperty(_) | v5::ErrorV5::InvalidByteProperty(..)) => {
            DecodeError::Protocol(e.to_string())
        }
        e => DecodeError::Malformed(clip(e.to_string())),
    }
}

/// A string field as the session gets it: U+0000 is malformed (MQTT 5.0 section 1.5.4, MQTT
/// 3.1.1 MQTT-1.5.3-2; `mqtt-proto` checks only the UTF-8).
fn text(s: &str, what: &str) -> Result<String, DecodeError> {
    if s.contains('\0') {
        Err(DecodeError::Malformed(format!("the {what} holds U+0000")))
    } else {
        Ok(s.to_owned())
    }
}

fn opt_text(s: Option<&Arc<str>>, what: &str) -> Result<Option<String>, DecodeError> {
    s.map(|s| text(s, what)).transpose()
}

fn users(props: &[v5::UserProperty]) -> Result<Vec<UserProperty>, DecodeError> {
    props
        .iter()
        .map(|p| {
            Ok((
                text(&p.name, "user property")?,
                text(&p.value, "user property")?,
            ))
        })
        .collect()
}

/// A topic name that cannot be an alias's empty one: a will's topic, a Response Topic, an MQTT
/// 3.1.1 PUBLISH's topic (MQTT-4.7.3-1). `mqtt-proto` refused wildcards and U+0000 already.
fn topic(name: &TopicName, what: &str) -> Result<String, DecodeError> {
    if name.is_empty() {
        Err(DecodeError::Malformed(format!("the {what} is empty")))
    } else {
        Ok(name.to_string())
    }
}

/// Checks on the CONNECT flags (byte after the protocol level) `mqtt-proto` does not make.
fn connect_flags(version: Version, body: &[u8]) -> Result<(), DecodeError> {
    let flags = match body {
        [hi, lo, rest @ ..] => rest.get(usize::from(u16::from_be_bytes([*hi, *lo])) + 1),
        _ => None,
    };
    let Some(&flags) = flags else {
        return Err(DecodeError::Malformed("CONNECT without its flags".into()));
    };
    const WILL: u8 = 0b0000_0100;
    const WILL_RETAIN: u8 = 0b0010_0000;
    const PASSWORD: u8 = 0b0100_0000;
    const USERNAME: u8 = 0b1000_0000;
    if flags & WILL == 0 && flags & WILL_RETAIN != 0 {
        return Err(DecodeError::Malformed(
            "CONNECT with Will Retain but no will".into(),
        ));
    }
    if version == Version::V311 && flags & PASSWORD != 0 && flags & USERNAME == 0 {
        return Err(DecodeError::Malformed(
            "MQTT 3.1.1 CONNECT with a password but no user name".into(),
        ));
    }
    Ok(())
}

fn qos_pid(q: QosPid) -> (u8, Option<u16>) {
    match q {
        QosPid::Level0 => (0, None),
        QosPid::Level1(pid) => (1, Some(pid.value())),
        QosPid::Level2(pid) => (2, Some(pid.value())),
    }
}

/// The v5 reason code nearest to an MQTT 3.1.1 CONNACK return code (the inverse of
/// [`v3_return_code`] on the codes it yields).
fn v3_reason(code: v3::ConnectReturnCode) -> u8 {
    use v3::ConnectReturnCode as C;
    match code {
        C::Accepted => reason::SUCCESS,
        C::UnacceptableProtocolVersion => reason::UNSUPPORTED_PROTOCOL_VERSION,
        C::IdentifierRejected => reason::CLIENT_IDENTIFIER_NOT_VALID,
        C::ServerUnavailable => reason::SERVER_UNAVAILABLE,
        C::BadUserNameOrPassword => reason::BAD_USER_NAME_OR_PASSWORD,
        C::NotAuthorized => reason::NOT_AUTHORIZED,
    }
}

fn from_v3(packet: v3::Packet, body: &[u8]) -> Result<Packet, DecodeError> {
    let ack = |pid: Pid| PubAck {
        pid: pid.value(),
        ..PubAck::default()
    };
    Ok(match packet {
        v3::Packet::Connect(c) => {
            connect_flags(Version::V311, body)?;
            let will = match c.last_will {
                Some(w) => Some(Will {
                    topic: topic(&w.topic_name, "will topic")?,
                    payload: w.message,
                    qos: w.qos as u8,
                    retain: w.retain,
                    props: PublishProps::default(),
                    delay: None,
                }),
                None => None,
            };
            Packet::Connect(Box::new(Connect {
                version: Version::V311,
                client_id: text(&c.client_id, "client identifier")?,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                username: opt_text(c.username.as_ref(), "user name")?,
                password: c.password,
                will,
                session_expiry: None,
                receive_maximum: None,
                maximum_packet_size: None,
                topic_alias_maximum: None,
                request_response_info: None,
                request_problem_info: None,
                auth_method: None,
                user: Vec::new(),
            }))
        }
        v3::Packet::Connack(c) => Packet::Connack(Connack {
            session_present: c.session_present,
            code: v3_reason(c.code),
            props: ConnackProps::default(),
        }),
        v3::Packet::Publish(p) => {
            let (qos, pid) = qos_pid(p.qos_pid);
            if qos == 0 && p.dup {
                // MQTT-3.3.1-2.
                return Err(DecodeError::Malformed(
                    "a QoS 0 PUBLISH with DUP set".into(),
                ));
            }
            Packet::Publish(Publish {
                topic: topic(&p.topic_name, "topic name")?,
                qos,
                pid,
                retain: p.retain,
                dup: p.dup,
                payload: p.payload,
                props: PublishProps::default(),
            })
        }
        v3::Packet::Puback(pid) => Packet::Puback(ack(pid)),
        v3::Packet::Pubrec(pid) => Packet::Pubrec(ack(pid)),
        v3::Packet::Pubrel(pid) => Packet::Pubrel(ack(pid)),
        v3::Packet::Pubcomp(pid) => Packet::Pubcomp(ack(pid)),
        v3::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pid: s.pid.value(),
            subscription_id: None,
            filters: s
                .topics
                .iter()
                .map(|(filter, qos)| {
                    let options = SubOptions {
                        qos: *qos as u8,
                        ..SubOptions::default()
                    };
                    (filter.to_string(), options)
                })
                .collect(),
            user: Vec::new(),
        }),
        v3::Packet::Suback(s) => Packet::Suback(FilterAck {
            pid: s.pid.value(),
            codes: s
                .topics
                .iter()
                .map(|code| match code {
                    v3::SubscribeReturnCode::MaxLevel0 => 0,
                    v3::SubscribeReturnCode::MaxLevel1 => 1,
                    v3::SubscribeReturnCode::MaxLevel2 => 2,
                    v3::SubscribeReturnCode::Failure => reason::UNSPECIFIED_ERROR,
                })
                .collect(),
            reason_string: None,
        }),
        v3::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pid: u.pid.value(),
            filters: u.topics.iter().map(|f| f.to_string()).collect(),
        }),
        v3::Packet::Unsuback(pid) => Packet::Unsuback(FilterAck {
            pid: pid.value(),
            ..FilterAck::default()
        }),
        v3::Packet::Pingreq => Packet::Pingreq,
        v3::Packet::Pingresp => Packet::Pingresp,
        v3::Packet::Disconnect => Packet::Disconnect(Disconnect::default()),
    })
}

fn publish_props_v5(p: &v5::PublishProperties) -> Result<PublishProps, DecodeError> {
    Ok(PublishProps {
        payload_utf8: p.payload_is_utf8,
        message_expiry: p.message_expiry_interval,
        content_type: opt_text(p.content_type.as_ref(), "content type")?,
        response_topic: p
            .response_topic
            .as_ref()
            .map(|t| topic(t, "response topic"))
            .transpose()?,
        correlation_data: p.correlation_data.clone(),
        user: users(&p.user_properties)?,
        subscription_ids: p.subscription_id.iter().map(|id| id.value()).collect(),
        topic_alias: p.topic_alias,
    })
}

fn from_v5(packet: v5::Packet, body: &[u8]) -> Result<Packet, DecodeError> {
    let ack = |pid: Pid, code: u8, reason: Option<&Arc<str>>, user: &[v5::UserProperty]| {
        users(user)?;
        Ok::<_, DecodeError>(PubAck {
            pid: pid.value(),
            code,
            reason_string: opt_text(reason, "reason string")?,
        })
    };
    Ok(match packet {
        v5::Packet::Connect(c) => {
            connect_flags(Version::V5, body)?;
            let p = &c.properties;
            if p.receive_max == Some(0) {
                return Err(DecodeError::Protocol("a Receive Maximum of 0".into()));
            }
            if p.max_packet_size == Some(0) {
                return Err(DecodeError::Protocol("a Maximum Packet Size of 0".into()));
            }
            if p.auth_data.is_some() && p.auth_method.is_none() {
                return Err(DecodeError::Protocol(
                    "Authentication Data without an Authentication Method".into(),
                ));
            }
            let will = match &c.last_will {
                Some(w) => Some(Will {
                    topic: topic(&w.topic_name, "will topic")?,
                    payload: w.payload.clone(),
                    qos: w.qos as u8,
                    retain: w.retain,
                    props: PublishProps {
                        payload_utf8: w.properties.payload_is_utf8,
                        message_expiry: w.properties.message_expiry_interval,
                        content_type: opt_text(w.properties.content_type.as_ref(), "content type")?,
                        response_topic: w
                            .properties
                            .response_topic
                            .as_ref()
                            .map(|t| topic(t, "response topic"))
                            .transpose()?,
                        correlation_data: w.properties.correlation_data.clone(),
                        user: users(&w.properties.user_properties)?,
                        subscription_ids: Vec::new(),
                        topic_alias: None,
                    },
                    delay: w.properties.delay_interval,
                }),
                None => None,
            };
            Packet::Connect(Box::new(Connect {
                version: Version::V5,
                client_id: text(&c.client_id, "client identifier")?,
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                username: opt_text(c.username.as_ref(), "user name")?,
                password: c.password.clone(),
                will,
                session_expiry: p.session_expiry_interval,
                receive_maximum: p.receive_max,
                maximum_packet_size: p.max_packet_size,
                topic_alias_maximum: p.topic_alias_max,
                request_response_info: p.request_response_info,
                request_problem_info: p.request_problem_info,
                auth_method: opt_text(p.auth_method.as_ref(), "authentication method")?,
                user: users(&p.user_properties)?,
            }))
        }
        v5::Packet::Connack(c) => {
            let p = &c.properties;
            users(&p.user_properties)?;
            opt_text(p.server_reference.as_ref(), "server reference")?;
            opt_text(p.auth_method.as_ref(), "authentication method")?;
            Packet::Connack(Connack {
                session_present: c.session_present,
                code: c.reason_code as u8,
                props: ConnackProps {
                    session_expiry: p.session_expiry_interval,
                    receive_maximum: p.receive_max,
                    maximum_qos: p.max_qos.map(|q| q as u8),
                    retain_available: p.retain_available,
                    maximum_packet_size: p.max_packet_size,
                    assigned_client_id: opt_text(
                        p.assigned_client_id.as_ref(),
                        "assigned client identifier",
                    )?,
                    topic_alias_maximum: p.topic_alias_max,
                    reason_string: opt_text(p.reason_string.as_ref(), "reason string")?,
                    wildcard_available: p.wildcard_subscription_available,
                    subscription_ids_available: p.subscription_id_available,
                    shared_available: p.shared_subscription_available,
                    server_keep_alive: p.server_keep_alive,
                    response_info: opt_text(p.response_info.as_ref(), "response information")?,
                },
            })
        }
        v5::Packet::Publish(p) => {
            if p.properties.subscription_id.is_some() {
                return Err(DecodeError::Protocol(
                    "a PUBLISH from a client carries a Subscription Identifier".into(),
                ));
            }
            let (qos, pid) = qos_pid(p.qos_pid);
            let props = publish_props_v5(&p.properties)?;
            Packet::Publish(Publish {
                topic: p.topic_name.to_string(),
                qos,
                pid,
                retain: p.retain,
                dup: p.dup,
                payload: p.payload,
                props,
            })
        }
        v5::Packet::Puback(a) => Packet::Puback(ack(
            a.pid,
            a.reason_code as u8,
            a.properties.reason_string.as_ref(),
            &a.properties.user_properties,
        )?),
        v5::Packet::Pubrec(a) => Packet::Pubrec(ack(
            a.pid,
            a.reason_code as u8,
            a.properties.reason_string.as_ref(),
            &a.properties.user_properties,
        )?),
        v5::Packet::Pubrel(a) => Packet::Pubrel(ack(
            a.pid,
            a.reason_code as u8,
            a.properties.reason_string.as_ref(),
            &a.properties.user_properties,
        )?),
        v5::Packet::Pubcomp(a) => Packet::Pubcomp(ack(
            a.pid,
            a.reason_code as u8,
            a.properties.reason_string.as_ref(),
            &a.properties.user_properties,
        )?),
        v5::Packet::Subscribe(s) => {
            let subscription_id = s.properties.subscription_id.map(|id| id.value());
            if subscription_id == Some(0) {
                return Err(DecodeError::Protocol(
                    "a Subscription Identifier of 0".into(),
                ));
            }
            let mut filters = Vec::with_capacity(s.topics.len());
            for (filter, o) in &s.topics {
                if o.no_local && filter.is_shared() {
                    return Err(DecodeError::Protocol(
                        "No Local on a shared subscription".into(),
                    ));
                }
                let options = SubOptions {
                    qos: o.max_qos as u8,
                    no_local: o.no_local,
                    retain_as_published: o.retain_as_published,
                    retain_handling: o.retain_handling as u8,
                };
                filters.push((filter.to_string(), options));
            }
            Packet::Subscribe(Subscribe {
                pid: s.pid.value(),
                subscription_id,
                filters,
                user: users(&s.properties.user_properties)?,
            })
        }
        v5::Packet::Suback(s) => {
            users(&s.properties.user_properties)?;
            Packet::Suback(FilterAck {
                pid: s.pid.value(),
                codes: s.topics.iter().map(|c| *c as u8).collect(),
                reason_string: opt_text(s.properties.reason_string.as_ref(), "reason string")?,
            })
        }
        v5::Packet::Unsubscribe(u) => {
            users(&u.properties.user_properties)?;
            Packet::Unsubscribe(Unsubscribe {
                pid: u.pid.value(),
                filters: u.topics.iter().map(|f| f.to_string()).collect(),
            })
        }
        v5::Packet::Unsuback(u) => {
            users(&u.properties.user_properties)?;
            Packet::Unsuback(FilterAck {
                pid: u.pid.value(),
                codes: u.topics.iter().map(|c| *c as u8).collect(),
                reason_string: opt_text(u.properties.reason_string.as_ref(), "reason string")?,
            })
        }
        v5::Packet::Pingreq => Packet::Pingreq,
        v5::Packet::Pingresp => Packet::Pingresp,
        v5::Packet::Disconnect(d) => {
            users(&d.properties.user_properties)?;
            opt_text(d.properties.server_reference.as_ref(), "server reference")?;
            Packet::Disconnect(Disconnect {
                code: d.reason_code as u8,
                session_expiry: d.properties.session_expiry_interval,
                reason_string: opt_text(d.properties.reason_string.as_ref(), "reason string")?,
            })
        }
        v5::Packet::Auth(a) => {
            users(&a.properties.user_properties)?;
            opt_text(a.properties.reason_string.as_ref(), "reason string")?;
            opt_text(a.properties.auth_method.as_ref(), "authentication method")?;
            Packet::Auth(a.reason_code as u8)
        }
    })
}

/// Appends `packet`'s bytes, as `version` writes it, to `out`. Properties a version lacks are
/// left out (see [`Connack`], [`FilterAck`], [`PubAck`] for what MQTT 3.1.1 makes of reason
/// codes). Errors (nothing is appended): a field over its wire limit (a string over 65535
/// bytes, a packet over 268435455 bytes of Remaining Length), a value the version cannot carry
/// (a reason code the packet type does not take in v5, AUTH in MQTT 3.1.1, QoS 3, a packet
/// identifier missing or 0 where one is needed, a Subscription Identifier of 0 or over
/// 268435455).
pub fn encode(version: Version, packet: &Packet, out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    let written = match (version, packet) {
        // Written here: mqtt-proto's PublishProperties holds one Subscription Identifier (a
        // server's PUBLISH carries one per matching subscription), and this way the payload is
        // copied once, straight into `out`.
        (_, Packet::Publish(p)) => encode_publish(version, p, out),
        // mqtt-proto 0.4.0 writes a 3.1.1 SUBACK's Failure return code as 0x03, not 0x80.
        (Version::V311, Packet::Suback(a)) => encode_v3_suback(a, out),
        (Version::V311, p) => to_v3(p).and_then(|p| {
            let bytes = p.encode().map_err(|e| e.to_string())?;
            out.extend_from_slice(bytes.as_ref());
            Ok(())
        }),
        (Version::V5, p) => to_v5(p).and_then(|p| {
            let bytes = p.encode().map_err(|e| e.to_string())?;
            out.extend_from_slice(bytes.as_ref());
            Ok(())
        }),
    };
    if written.is_err() {
        out.truncate(start);
    }
    written
}

/// Sizes the variable-length fields of a packet as they are converted for `mqtt-proto`, which
/// truncates a length over 65535 silently and panics on properties over 268435455 bytes: both
/// are refused before it sees them.
#[derive(Default)]
struct Wire {
    /// An upper bound of the Remaining Length so far.
    bytes: usize,
}

impl Wire {
    /// Leaves room for the fixed-size fields of any packet (flags, identifiers, lengths).
    const FIXED: usize = 64;

    fn field(&mut self, len: usize, what: &str) -> Result<(), String> {
        if len > MAX_FIELD {
            return Err(format!(
                "{what} of {len} bytes is over the {MAX_FIELD}-byte limit of a field"
            ));
        }
        // Two bytes of length, one of property identifier.
        self.add(len + 3)
    }

    fn add(&mut self, len: usize) -> Result<(), String> {
        self.bytes = self.bytes.saturating_add(len);
        if self.bytes.saturating_add(Self::FIXED) > MAX_REMAINING {
            return Err(format!(
                "packet of over {MAX_REMAINING} bytes of remaining length"
            ));
        }
        Ok(())
    }

    fn str(&mut self, s: &str, what: &str) -> Result<Arc<str>, String> {
        self.field(s.len(), what)?;
        Ok(s.into())
    }

    fn opt_str(&mut self, s: &Option<String>, what: &str) -> Result<Option<Arc<str>>, String> {
        s.as_deref().map(|s| self.str(s, what)).transpose()
    }

    fn bin(&mut self, b: &Bytes, what: &str) -> Result<Bytes, String> {
        self.field(b.len(), what)?;
        Ok(b.clone())
    }

    fn opt_bin(&mut self, b: &Option<Bytes>, what: &str) -> Result<Option<Bytes>, String> {
        b.as_ref().map(|b| self.bin(b, what)).transpose()
    }

    fn topic(&mut self, s: &str, what: &str) -> Result<TopicName, String> {
        self.field(s.len(), what)?;
        TopicName::try_from(s).map_err(|e| clip(format!("{what}: {e}")))
    }

    fn filter(&mut self, s: &str) -> Result<TopicFilter, String> {
        self.field(s.len(), "topic filter")?;
        TopicFilter::try_from(s).map_err(|e| clip(e.to_string()))
    }

    fn users(&mut self, user: &[UserProperty]) -> Result<Vec<v5::UserProperty>, String> {
        user.iter()
            .map(|(name, value)| {
                Ok(v5::UserProperty {
                    name: self.str(name, "user property name")?,
                    value: self.str(value, "user property value")?,
                })
            })
            .collect()
    }
}

fn pid(pid: u16) -> Result<Pid, String> {
    Pid::try_from(pid).map_err(|_| "packet identifier 0".to_string())
}

fn qos(qos: u8) -> Result<QoS, String> {
    QoS::from_u8(qos).map_err(|_| format!("QoS {qos}"))
}

/// A v5 reason code `from` takes, else an error naming the packet.
fn code<T>(code: u8, from: fn(u8) -> Option<T>, packet: &str) -> Result<T, String> {
    from(code).ok_or_else(|| format!("{code:#04x} is not a reason code of a v5 {packet}"))
}

/// The MQTT 3.1.1 CONNACK return code for a v5 reason code (see [`Connack`]).
fn v3_return_code(code: u8) -> v3::ConnectReturnCode {
    use v3::ConnectReturnCode as C;
    match code {
        reason::SUCCESS => C::Accepted,
        reason::UNSUPPORTED_PROTOCOL_VERSION => C::UnacceptableProtocolVersion,
        reason::CLIENT_IDENTIFIER_NOT_VALID => C::IdentifierRejected,
        reason::BAD_USER_NAME_OR_PASSWORD => C::BadUserNameOrPassword,
        reason::NOT_AUTHORIZED | reason::BAD_AUTHENTICATION_METHOD => C::NotAuthorized,
        // 0x88 Server unavailable, 0x89 Server busy, 0x8B Server shutting down, and the rest.
        _ => C::ServerUnavailable,
    }
}

fn to_v3(packet: &Packet) -> Result<v3::Packet, String> {
    let mut w = Wire::default();
    let packet = match packet {
        Packet::Connect(c) => {
            let last_will = match &c.will {
                Some(will) => Some(v3::LastWill {
                    qos: qos(will.qos)?,
                    retain: will.retain,
                    topic_name: w.topic(&will.topic, "will topic")?,
                    message: w.bin(&will.payload, "will payload")?,
                }),
                None => None,
            };
            v3::Packet::Connect(v3::Connect {
                protocol: mqtt_proto::Protocol::V311,
                clean_session: c.clean_start,
                keep_alive: c.keep_alive,
                client_id: w.str(&c.client_id, "client identifier")?,
                last_will,
                username: w.opt_str(&c.username, "user name")?,
                password: w.opt_bin(&c.password, "password")?,
            })
        }
        Packet::Connack(c) => v3::Packet::Connack(v3::Connack {
            session_present: c.session_present,
            code: v3_return_code(c.code),
        }),
        Packet::Publish(_) | Packet::Suback(_) => {
            return Err("PUBLISH and SUBACK are written by encode".into());
        }
        Packet::Puback(a) => v3::Packet::Puback(pid(a.pid)?),
        Packet::Pubrec(a) => v3::Packet::Pubrec(pid(a.pid)?),
        Packet::Pubrel(a) => v3::Packet::Pubrel(pid(a.pid)?),
        Packet::Pubcomp(a) => v3::Packet::Pubcomp(pid(a.pid)?),
        Packet::Subscribe(s) => v3::Packet::Subscribe(v3::Subscribe {
            pid: pid(s.pid)?,
            topics: s
                .filters
                .iter()
                .map(|(filter, options)| Ok((w.filter(filter)?, qos(options.qos)?)))
                .collect::<Result<_, String>>()?,
        }),
        Packet::Unsubscribe(u) => v3::Packet::Unsubscribe(v3::Unsubscribe {
            pid: pid(u.pid)?,
            topics: u
                .filters
                .iter()
                .map(|filter| w.filter(filter))
                .collect::<Result<_, String>>()?,
        }),
        Packet::Unsuback(a) => v3::Packet::Unsuback(pid(a.pid)?),
        Packet::Pingreq => v3::Packet::Pingreq,
        Packet::Pingresp => v3::Packet::Pingresp,
        Packet::Disconnect(_) => v3::Packet::Disconnect,
        Packet::Auth(_) => return Err("MQTT 3.1.1 has no AUTH packet".into()),
    };
    Ok(packet)
}

fn to_v5(packet: &Packet) -> Result<v5::Packet, String> {
    let mut w = Wire::default();
    let packet = match packet {
        Packet::Connect(c) => {
            let last_will = match &c.will {
                Some(will) => Some(v5::LastWill {
                    qos: qos(will.qos)?,
                    retain: will.retain,
                    topic_name: w.topic(&will.topic, "will topic")?,
                    payload: w.bin(&will.payload, "will payload")?,
                    properties: v5::WillProperties {
                        delay_interval: will.delay,
                        payload_is_utf8: will.props.payload_utf8,
                        message_expiry_interval: will.props.message_expiry,
                        content_type: w.opt_str(&will.props.content_type, "content type")?,
                        response_topic: will
                            .props
                            .response_topic
                            .as_deref()
                            .map(|t| w.topic(t, "response topic"))
                            .transpose()?,
                        correlation_data: w
                            .opt_bin(&will.props.correlation_data, "correlation data")?,
                        user_properties: w.users(&will.props.user)?,
                    },
                }),
                None => None,
            };
            v5::Packet::Connect(v5::Connect {
                protocol: mqtt_proto::Protocol::V500,
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                properties: v5::ConnectProperties {
                    session_expiry_interval: c.session_expiry,
                    receive_max: c.receive_maximum,
                    max_packet_size: c.maximum_packet_size,
                    topic_alias_max: c.topic_alias_maximum,
                    request_response_info: c.request_response_info,
                    request_problem_info: c.request_problem_info,
                    user_properties: w.users(&c.user)?,
                    auth_method: w.opt_str(&c.auth_method, "authentication method")?,
                    auth_data: None,
                },
                client_id: w.str(&c.client_id, "client identifier")?,
                last_will,
                username: w.opt_str(&c.username, "user name")?,
                password: w.opt_bin(&c.password, "password")?,
            })
        }
        Packet::Connack(c) => {
            let p = &c.props;
            let max_qos = match p.maximum_qos {
                None | Some(2) => None,
                Some(q @ (0 | 1)) => Some(qos(q)?),
                Some(q) => return Err(format!("Maximum QoS {q}")),
            };
            v5::Packet::Connack(v5::Connack {
                session_present: c.session_present,
                reason_code: code(c.code, v5::ConnectReasonCode::from_u8, "CONNACK")?,
                properties: v5::ConnackProperties {
                    session_expiry_interval: p.session_expiry,
                    receive_max: p.receive_maximum,
                    max_qos,
                    retain_available: p.retain_available,
                    max_packet_size: p.maximum_packet_size,
                    assigned_client_id: w
                        .opt_str(&p.assigned_client_id, "assigned client identifier")?,
                    topic_alias_max: p.topic_alias_maximum,
                    reason_string: w.opt_str(&p.reason_string, "reason string")?,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: p.wildcard_available,
                    subscription_id_available: p.subscription_ids_available,
                    shared_subscription_available: p.shared_available,
                    server_keep_alive: p.server_keep_alive,
                    response_info: w.opt_str(&p.response_info, "response information")?,
                    server_reference: None,
                    auth_method: None,
                    auth_data: None,
                },
            })
        }
        Packet::Publish(_) => return Err("PUBLISH is written by encode".into()),
        Packet::Puback(a) => v5::Packet::Puback(v5::Puback {
            pid: pid(a.pid)?,
            reason_code: code(a.code, v5::PubackReasonCode::from_u8, "PUBACK")?,
            properties: v5::PubackProperties {
                reason_string: w.opt_str(&a.reason_string, "reason string")?,
                user_properties: Vec::new(),
            },
        }),
        Packet::Pubrec(a) => v5::Packet::Pubrec(v5::Pubrec {
            pid: pid(a.pid)?,
            reason_code: code(a.code, v5::PubrecReasonCode::from_u8, "PUBREC")?,
            properties: v5::PubrecProperties {
                reason_string: w.opt_str(&a.reason_string, "reason string")?,
                user_properties: Vec::new(),
            },
        }),
        Packet::Pubrel(a) => v5::Packet::Pubrel(v5::Pubrel {
            pid: pid(a.pid)?,
            reason_code: code(a.code, v5::PubrelReasonCode::from_u8, "PUBREL")?,
            properties: v5::PubrelProperties {
                reason_string: w.opt_str(&a.reason_string, "reason string")?,
                user_properties: Vec::new(),
            },
        }),
        Packet::Pubcomp(a) => v5::Packet::Pubcomp(v5::Pubcomp {
            pid: pid(a.pid)?,
            reason_code: code(a.code, v5::PubcompReasonCode::from_u8, "PUBCOMP")?,
            properties: v5::PubcompProperties {
                reason_string: w.opt_str(&a.reason_string, "reason string")?,
                user_properties: Vec::new(),
            },
        }),
        Packet::Subscribe(s) => {
            let topics = s
                .filters
                .iter()
                .map(|(filter, o)| {
                    let retain_handling = v5::RetainHandling::from_u8(o.retain_handling)
                        .ok_or_else(|| format!("Retain Handling {}", o.retain_handling))?;
                    let options = v5::SubscriptionOptions {
                        max_qos: qos(o.qos)?,
                        no_local: o.no_local,
                        retain_as_published: o.retain_as_published,
                        retain_handling,
                    };
                    Ok((w.filter(filter)?, options))
                })
                .collect::<Result<_, String>>()?;
            v5::Packet::Subscribe(v5::Subscribe {
                pid: pid(s.pid)?,
                properties: v5::SubscribeProperties {
                    subscription_id: s.subscription_id.map(subscription_id).transpose()?,
                    user_properties: w.users(&s.user)?,
                },
                topics,
            })
        }
        Packet::Suback(a) => {
            w.add(a.codes.len())?;
            v5::Packet::Suback(v5::Suback {
                pid: pid(a.pid)?,
                properties: v5::SubackProperties {
                    reason_string: w.opt_str(&a.reason_string, "reason string")?,
                    user_properties: Vec::new(),
                },
                topics: a
                    .codes
                    .iter()
                    .map(|&c| code(c, v5::SubscribeReasonCode::from_u8, "SUBACK"))
                    .collect::<Result<_, String>>()?,
            })
        }
        Packet::Unsubscribe(u) => v5::Packet::Unsubscribe(v5::Unsubscribe {
            pid: pid(u.pid)?,
            properties: v5::UnsubscribeProperties::default(),
            topics: u
                .filters
                .iter()
                .map(|filter| w.filter(filter))
                .collect::<Result<_, String>>()?,
        }),
        Packet::Unsuback(a) => {
            w.add(a.codes.len())?;
            v5::Packet::Unsuback(v5::Unsuback {
                pid: pid(a.pid)?,
                properties: v5::UnsubackProperties {
                    reason_string: w.opt_str(&a.reason_string, "reason string")?,
                    user_properties: Vec::new(),
                },
                topics: a
                    .codes
                    .iter()
                    .map(|&c| code(c, v5::UnsubscribeReasonCode::from_u8, "UNSUBACK"))
                    .collect::<Result<_, String>>()?,
            })
        }
        Packet::Pingreq => v5::Packet::Pingreq,
        Packet::Pingresp => v5::Packet::Pingresp,
        Packet::Disconnect(d) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: code(d.code, v5::DisconnectReasonCode::from_u8, "DISCONNECT")?,
            properties: v5::DisconnectProperties {
                session_expiry_interval: d.session_expiry,
                reason_string: w.opt_str(&d.reason_string, "reason string")?,
                user_properties: Vec::new(),
                server_reference: None,
            },
        }),
        Packet::Auth(c) => v5::Packet::Auth(v5::Auth::new(code(
            *c,
            v5::AuthReasonCode::from_u8,
            "AUTH",
        )?)),
    };
    Ok(packet)
}

/// A Subscription Identifier: 1 to 268435455 (MQTT 5.0 section 3.3.2.3.8).
fn subscription_id(id: u32) -> Result<v5::VarByteInt, String> {
    match v5::VarByteInt::try_from(id) {
        Ok(v) if id > 0 => Ok(v),
        _ => Err(format!("Subscription Identifier {id}")),
    }
}

/// An MQTT 3.1.1 SUBACK: return codes 0, 1, 2, and 0x80 for any failure (section 3.9.3).
fn encode_v3_suback(a: &FilterAck, out: &mut Vec<u8>) -> Result<(), String> {
    let remaining = 2 + a.codes.len();
    if remaining > MAX_REMAINING {
        return Err(format!("SUBACK of {} return codes", a.codes.len()));
    }
    let id = pid(a.pid)?.value();
    out.push(0x90);
    put_var_int(out, remaining);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(a.codes.iter().map(|&c| if c <= 2 { c } else { 0x80 }));
    Ok(())
}

/// A PUBLISH (MQTT 3.1.1 section 3.3, MQTT 5.0 section 3.3), properties for v5 only.
fn encode_publish(version: Version, p: &Publish, out: &mut Vec<u8>) -> Result<(), String> {
    let id = match (p.qos, p.pid) {
        (0, None) => None,
        (1 | 2, Some(id)) => Some(pid(id)?.value()),
        (0..=2, id) => {
            return Err(format!(
                "a QoS {} PUBLISH with packet identifier {id:?}",
                p.qos
            ));
        }
        (q, _) => return Err(format!("QoS {q}")),
    };
    if p.topic.len() > MAX_FIELD {
        return Err(format!("topic name of {} bytes", p.topic.len()));
    }
    let mut props = Vec::new();
    if version == Version::V5 {
        put_publish_props(&p.props, &mut props)?;
    }
    let mut remaining = 2 + p.topic.len() + if id.is_some() { 2 } else { 0 };
    if version == Version::V5 {
        remaining += var_int_len(props.len()) + props.len();
    }
    remaining = remaining.saturating_add(p.payload.len());
    if remaining > MAX_REMAINING {
        return Err(format!(
            "PUBLISH of {remaining} bytes of remaining length, over {MAX_REMAINING}"
        ));
    }
    out.reserve(5 + remaining);
    out.push(0x30 | p.qos << 1 | u8::from(p.dup) << 3 | u8::from(p.retain));
    put_var_int(out, remaining);
    put_str(out, &p.topic);
    if let Some(id) = id {
        out.extend_from_slice(&id.to_be_bytes());
    }
    if version == Version::V5 {
        put_var_int(out, props.len());
        out.extend_from_slice(&props);
    }
    out.extend_from_slice(&p.payload);
    Ok(())
}

/// The properties of a v5 PUBLISH (section 3.3.2.3), without their length.
fn put_publish_props(p: &PublishProps, out: &mut Vec<u8>) -> Result<(), String> {
    let field = |b: &[u8], what: &str| {
        if b.len() > MAX_FIELD {
            Err(format!("{what} of {} bytes", b.len()))
        } else {
            Ok(())
        }
    };
    if let Some(utf8) = p.payload_utf8 {
        out.extend_from_slice(&[0x01, u8::from(utf8)]);
    }
    if let Some(expiry) = p.message_expiry {
        out.push(0x02);
        out.extend_from_slice(&expiry.to_be_bytes());
    }
    if let Some(s) = &p.content_type {
        field(s.as_bytes(), "content type")?;
        out.push(0x03);
        put_str(out, s);
    }
    if let Some(s) = &p.response_topic {
        field(s.as_bytes(), "response topic")?;
        out.push(0x08);
        put_str(out, s);
    }
    if let Some(b) = &p.correlation_data {
        field(b, "correlation data")?;
        out.push(0x09);
        put_bin(out, b);
    }
    for &id in &p.subscription_ids {
        let id = subscription_id(id)?.value();
        out.push(0x0B);
        put_var_int(out, id as usize);
    }
    if let Some(alias) = p.topic_alias {
        out.push(0x23);
        out.extend_from_slice(&alias.to_be_bytes());
    }
    for (name, value) in &p.user {
        field(name.as_bytes(), "user property name")?;
        field(value.as_bytes(), "user property value")?;
        out.push(0x26);
        put_str(out, name);
        put_str(out, value);
        if out.len() > MAX_REMAINING {
            return Err(format!("PUBLISH properties over {MAX_REMAINING} bytes"));
        }
    }
    Ok(())
}

/// A string whose length was checked (at most [`MAX_FIELD`]).
fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bin(out, s.as_bytes());
}

/// Binary data whose length was checked (at most [`MAX_FIELD`]).
fn put_bin(out: &mut Vec<u8>, b: &[u8]) {
    let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}

/// A Variable Byte Integer (MQTT 5.0 section 1.5.5) of a value at most [`MAX_REMAINING`].
fn put_var_int(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A packet of type and flags `first` around `body`.
    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        put_var_int(&mut out, body.len());
        out.extend_from_slice(body);
        out
    }

    /// A length-prefixed string.
    fn s(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, text);
        out
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn bytes(version: Version, packet: &Packet) -> Vec<u8> {
        let mut out = Vec::new();
        encode(version, packet, &mut out).unwrap();
        out
    }

    fn minimal_connect(version: Version) -> Connect {
        Connect {
            version,
            client_id: "sensor-1".into(),
            clean_start: true,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            session_expiry: None,
            receive_maximum: None,
            maximum_packet_size: None,
            topic_alias_maximum: None,
            request_response_info: None,
            request_problem_info: None,
            auth_method: None,
            user: Vec::new(),
        }
    }

    /// A decoder past a CONNECT of `version`.
    fn connected(version: Version) -> Decoder {
        let mut d = Decoder::new(LIMIT);
        let connect = Packet::Connect(Box::new(minimal_connect(version)));
        let b = bytes(version, &connect);
        assert_eq!(d.decode(&b), Ok(Some((connect, b.len()))));
        assert_eq!(d.version(), Some(version));
        d
    }

    /// Encodes `packet` and decodes it back with a copy of `decoder`: every strict prefix is
    /// `Ok(None)` (with `needed` the whole size once the fixed header is complete), the whole
    /// is the same packet, and the bytes of a next packet are left alone.
    fn round_trip(decoder: &Decoder, version: Version, packet: Packet) -> Vec<u8> {
        let b = bytes(version, &packet);
        let (header_len, _) = fixed_header(&b).unwrap().unwrap();
        for cut in 0..b.len() {
            let mut d = decoder.clone();
            assert_eq!(d.decode(&b[..cut]), Ok(None), "{packet:?} cut at {cut}");
            let needed = (cut >= header_len).then_some(b.len());
            assert_eq!(d.needed(&b[..cut]), needed, "{packet:?} cut at {cut}");
        }
        let mut stream = b.clone();
        stream.extend_from_slice(&[0xC0, 0x00]);
        let mut d = decoder.clone();
        assert_eq!(d.decode(&stream), Ok(Some((packet, b.len()))));
        b
    }

    fn decode_one(decoder: &Decoder, b: &[u8]) -> Result<Option<(Packet, usize)>, DecodeError> {
        decoder.clone().decode(b)
    }

    fn malformed(r: Result<Option<(Packet, usize)>, DecodeError>) -> bool {
        matches!(r, Err(DecodeError::Malformed(_)))
    }

    fn protocol(r: Result<Option<(Packet, usize)>, DecodeError>) -> bool {
        matches!(r, Err(DecodeError::Protocol(_)))
    }

    fn publish(qos: u8, pid: Option<u16>, payload: &'static [u8]) -> Publish {
        Publish {
            topic: "devices/t1/temp".into(),
            qos,
            pid,
            payload: Bytes::from_static(payload),
            ..Publish::default()
        }
    }

    fn ack(pid: u16, code: u8, reason: Option<&str>) -> PubAck {
        PubAck {
            pid,
            code,
            reason_string: reason.map(String::from),
        }
    }

    fn sub(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            ..SubOptions::default()
        }
    }

    #[test]
    fn v311_round_trips_every_packet_type() {
        let v = Version::V311;
        let connect = Connect {
            clean_start: false,
            keep_alive: 30,
            username: Some("alice".into()),
            password: Some(Bytes::from_static(b"secret")),
            will: Some(Will {
                topic: "dead/sensor-1".into(),
                payload: Bytes::from_static(b"bye"),
                qos: 1,
                retain: true,
                ..Will::default()
            }),
            ..minimal_connect(v)
        };
        round_trip(&Decoder::new(LIMIT), v, Packet::Connect(Box::new(connect)));
        round_trip(
            &Decoder::new(LIMIT),
            v,
            Packet::Connect(Box::new(Connect {
                client_id: String::new(),
                ..minimal_connect(v)
            })),
        );

        let d = connected(v);
        let mut packets = vec![
            Packet::Publish(Publish {
                retain: true,
                ..publish(0, None, b"{\"t\":21.5}")
            }),
            Packet::Publish(Publish {
                dup: true,
                ..publish(1, Some(7), b"")
            }),
            Packet::Publish(publish(2, Some(u16::MAX), b"\x00\x01\xff binary")),
            Packet::Puback(ack(1, 0, None)),
            Packet::Pubrec(ack(2, 0, None)),
            Packet::Pubrel(ack(3, 0, None)),
            Packet::Pubcomp(ack(4, 0, None)),
            Packet::Subscribe(Subscribe {
                pid: 5,
                filters: vec![("devices/+/temp".into(), sub(1)), ("#".into(), sub(2))],
                ..Subscribe::default()
            }),
            Packet::Suback(FilterAck {
                pid: 5,
                codes: vec![0, 1, 2, 0x80],
                reason_string: None,
            }),
            Packet::Unsubscribe(Unsubscribe {
                pid: 6,
                filters: vec!["devices/+/temp".into(), "#".into()],
            }),
            Packet::Unsuback(FilterAck {
                pid: 6,
                ..FilterAck::default()
            }),
            Packet::Pingreq,
            Packet::Pingresp,
            Packet::Disconnect(Disconnect::default()),
        ];
        for code in [0x00, 0x84, 0x85, 0x88, 0x86, 0x87] {
            packets.push(Packet::Connack(Connack {
                session_present: code == 0,
                code,
                props: ConnackProps::default(),
            }));
        }
        for packet in packets {
            round_trip(&d, v, packet);
        }
    }

    #[test]
    fn v5_round_trips_every_packet_type() {
        let v = Version::V5;
        let user = vec![
            ("site".to_string(), "north".to_string()),
            ("k".into(), "".into()),
        ];
        let props = PublishProps {
            payload_utf8: Some(true),
            message_expiry: Some(3600),
            content_type: Some("application/json".into()),
            response_topic: Some("$hub/response/42".into()),
            correlation_data: Some(Bytes::from_static(b"\x00req-42")),
            user: user.clone(),
            subscription_ids: Vec::new(),
            topic_alias: Some(3),
        };
        let connect = Connect {
            clean_start: false,
            username: Some("alice".into()),
            password: Some(Bytes::new()),
            will: Some(Will {
                topic: "dead/sensor-1".into(),
                payload: Bytes::from_static(b"gone"),
                qos: 2,
                retain: false,
                props: PublishProps {
                    topic_alias: None,
                    ..props.clone()
                },
                delay: Some(5),
            }),
            session_expiry: Some(u32::MAX),
            receive_maximum: Some(20),
            maximum_packet_size: Some(65536),
            topic_alias_maximum: Some(10),
            request_response_info: Some(true),
            request_problem_info: Some(false),
            auth_method: Some("SCRAM-SHA-1".into()),
            user: user.clone(),
            ..minimal_connect(v)
        };
        round_trip(&Decoder::new(LIMIT), v, Packet::Connect(Box::new(connect)));

        let d = connected(v);
        let packets = vec![
            Packet::Connack(Connack {
                session_present: true,
                code: 0,
                props: ConnackProps {
                    session_expiry: Some(600),
                    receive_maximum: Some(100),
                    maximum_qos: Some(1),
                    retain_available: Some(true),
                    maximum_packet_size: Some(1 << 20),
                    assigned_client_id: Some("auto-7f3a".into()),
                    topic_alias_maximum: Some(16),
                    reason_string: Some("welcome".into()),
                    wildcard_available: Some(true),
                    subscription_ids_available: Some(true),
                    shared_available: Some(false),
                    server_keep_alive: Some(120),
                    response_info: Some("$hub/response/".into()),
                },
            }),
            Packet::Connack(Connack {
                code: reason::BAD_USER_NAME_OR_PASSWORD,
                ..Connack::default()
            }),
            Packet::Publish(Publish {
                retain: true,
                props: props.clone(),
                ..publish(1, Some(9), b"{\"t\":21.5}")
            }),
            Packet::Publish(Publish {
                topic: String::new(),
                props: PublishProps {
                    topic_alias: Some(3),
                    ..PublishProps::default()
                },
                ..publish(2, Some(10), b"by alias")
            }),
            // DUP on QoS 0 is taken from a v5 client.
            Packet::Publish(Publish {
                dup: true,
                ..publish(0, None, b"")
            }),
            Packet::Puback(ack(1, 0, None)),
            Packet::Puback(ack(2, reason::NO_MATCHING_SUBSCRIBERS, Some("nobody"))),
            Packet::Pubrec(ack(3, reason::QUOTA_EXCEEDED, None)),
            Packet::Pubrel(ack(4, reason::PACKET_IDENTIFIER_NOT_FOUND, None)),
            Packet::Pubcomp(ack(5, 0, Some("done"))),
            Packet::Subscribe(Subscribe {
                pid: 6,
                subscription_id: Some(268_435_455),
                filters: vec![
                    (
                        "devices/+/temp".into(),
                        SubOptions {
                            qos: 2,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: 2,
                        },
                    ),
                    (
                        "$share/g/#".into(),
                        SubOptions {
                            retain_handling: 1,
                            ..sub(1)
                        },
                    ),
                ],
                user: user.clone(),
            }),
            Packet::Suback(FilterAck {
                pid: 6,
                codes: vec![2, reason::TOPIC_FILTER_INVALID, reason::NOT_AUTHORIZED],
                reason_string: Some("partly".into()),
            }),
            Packet::Unsubscribe(Unsubscribe {
                pid: 7,
                filters: vec!["devices/+/temp".into()],
            }),
            Packet::Unsuback(FilterAck {
                pid: 7,
                codes: vec![0, reason::NO_SUBSCRIPTION_EXISTED],
                reason_string: None,
            }),
            Packet::Pingreq,
            Packet::Pingresp,
            Packet::Disconnect(Disconnect::default()),
            Packet::Disconnect(Disconnect {
                code: reason::SERVER_SHUTTING_DOWN,
                session_expiry: Some(0),
                reason_string: Some("bye".into()),
            }),
            Packet::Auth(0x00),
            Packet::Auth(0x18),
        ];
        for packet in packets {
            round_trip(&d, v, packet);
        }
    }

    #[test]
    fn v311_leaves_out_what_it_cannot_carry() {
        let v = Version::V311;
        // CONNACK: the nearest return code.
        for (code, rc) in [
            (0x00, 0),
            (0x84, 1),
            (0x85, 2),
            (0x88, 3),
            (0x89, 3),
            (0x8B, 3),
            (0x86, 4),
            (0x87, 5),
            (0x8C, 5),
            (0x80, 3),
            (0x95, 3),
        ] {
            let connack = Packet::Connack(Connack {
                code,
                props: ConnackProps {
                    reason_string: Some("no".into()),
                    ..ConnackProps::default()
                },
                ..Connack::default()
            });
            assert_eq!(
                bytes(v, &connack),
                [0x20, 2, 0, rc],
                "reason code {code:#x}"
            );
        }
        // SUBACK: codes over 2 become 0x80.
        let suback = Packet::Suback(FilterAck {
            pid: 9,
            codes: vec![0, 1, 2, 0x80, 0x87, 0x8F],
            reason_string: Some("partly".into()),
        });
        assert_eq!(
            bytes(v, &suback),
            [0x90, 8, 0, 9, 0, 1, 2, 0x80, 0x80, 0x80]
        );
        // UNSUBACK and PUBACK..PUBCOMP: no codes.
        let unsuback = Packet::Unsuback(FilterAck {
            pid: 4,
            codes: vec![0x11],
            reason_string: Some("none".into()),
        });
        assert_eq!(bytes(v, &unsuback), [0xB0, 2, 0, 4]);
        let nack = ack(5, reason::QUOTA_EXCEEDED, Some("full"));
        assert_eq!(bytes(v, &Packet::Puback(nack.clone())), [0x40, 2, 0, 5]);
        assert_eq!(bytes(v, &Packet::Pubrec(nack.clone())), [0x50, 2, 0, 5]);
        assert_eq!(
            bytes(v, &Packet::Pubrel(ack(5, 0x92, None))),
            [0x62, 2, 0, 5]
        );
        assert_eq!(
            bytes(v, &Packet::Pubcomp(ack(5, 0x92, None))),
            [0x70, 2, 0, 5]
        );
        // PUBLISH: no properties.
        let p = Publish {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            props: PublishProps {
                content_type: Some("text/plain".into()),
                subscription_ids: vec![1],
                ..PublishProps::default()
            },
            ..Publish::default()
        };
        assert_eq!(bytes(v, &Packet::Publish(p)), [0x30, 4, 0, 1, b't', b'x']);
        let mut out = vec![1, 2];
        assert!(encode(v, &Packet::Auth(0x18), &mut out).is_err());
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn v5_publish_to_a_client_carries_every_subscription_identifier() {
        let p = Packet::Publish(Publish {
            topic: "t".into(),
            qos: 1,
            pid: Some(5),
            payload: Bytes::from_static(b"x"),
            props: PublishProps {
                subscription_ids: vec![1, 200],
                ..PublishProps::default()
            },
            ..Publish::default()
        });
        let b = bytes(Version::V5, &p);
        assert_eq!(b, hex("32 0c 0001 74 0005 05 0b01 0bc801 78"));
        // A client must not send one (MQTT-3.3.4-6).
        assert!(protocol(decode_one(&connected(Version::V5), &b)));
    }

    #[test]
    fn decodes_mosquitto_pub_311_connects() {
        // mosquitto_pub 2.0.11: -V mqttv311 -i sensor-7 -u alice -P secret --will-topic
        // dead/sensor-7 --will-payload bye --will-qos 1 --will-retain -k 30 -c
        let b = hex(
            "103700044d51545404ec001e000873656e736f722d37000d646561642f73656e736f722d37\
             00036279650005616c6963650006736563726574",
        );
        let mut d = Decoder::new(LIMIT);
        let Ok(Some((Packet::Connect(c), n))) = d.decode(&b) else {
            panic!("not a CONNECT: {:?}", d.decode(&b));
        };
        assert_eq!(n, b.len());
        assert_eq!(d.version(), Some(Version::V311));
        let expected = Connect {
            client_id: "sensor-7".into(),
            clean_start: false,
            keep_alive: 30,
            username: Some("alice".into()),
            password: Some(Bytes::from_static(b"secret")),
            will: Some(Will {
                topic: "dead/sensor-7".into(),
                payload: Bytes::from_static(b"bye"),
                qos: 1,
                retain: true,
                ..Will::default()
            }),
            ..minimal_connect(Version::V311)
        };
        assert_eq!(*c, expected);
        // Re-encoded, the same bytes.
        assert_eq!(bytes(Version::V311, &Packet::Connect(c)), b);

        // mosquitto_pub -V mqttv311 -t a/b -m hi: no client id, clean session, keep alive 60.
        let b = hex("100c00044d51545404 02 003c 0000");
        let Ok(Some((Packet::Connect(c), 14))) = Decoder::new(LIMIT).decode(&b) else {
            panic!("not a CONNECT");
        };
        assert_eq!(
            *c,
            Connect {
                client_id: String::new(),
                ..minimal_connect(Version::V311)
            }
        );
    }

    #[test]
    fn decodes_a_v5_connect_with_properties() {
        // mosquitto_pub 2.0.11: -V mqttv5 -i sensor-8 -k 45 -D connect session-expiry-interval
        // 3600 -D connect receive-maximum 20 -D connect maximum-packet-size 65536 -D connect
        // topic-alias-maximum 10 -D connect user-property site north -D connect
        // request-response-information 1 -D will will-delay-interval 5 --will-topic dead/x
        // --will-payload gone -D will content-type text/plain -D will user-property k v
        let b = hex(
            "105d00044d5154540506002d201100000e10210014270001000022000a2600047369746500056e6f72\
             74681901000873656e736f722d3819180000000503000a746578742f706c61696e2600016b000176\
             0006646561642f780004676f6e65",
        );
        let mut d = Decoder::new(LIMIT);
        let Ok(Some((Packet::Connect(c), n))) = d.decode(&b) else {
            panic!("not a CONNECT: {:?}", d.decode(&b));
        };
        assert_eq!(n, b.len());
        assert_eq!(d.version(), Some(Version::V5));
        let expected = Connect {
            version: Version::V5,
            client_id: "sensor-8".into(),
            keep_alive: 45,
            will: Some(Will {
                topic: "dead/x".into(),
                payload: Bytes::from_static(b"gone"),
                props: PublishProps {
                    content_type: Some("text/plain".into()),
                    user: vec![("k".into(), "v".into())],
                    ..PublishProps::default()
                },
                delay: Some(5),
                ..Will::default()
            }),
            session_expiry: Some(3600),
            receive_maximum: Some(20),
            maximum_packet_size: Some(65536),
            topic_alias_maximum: Some(10),
            request_response_info: Some(true),
            user: vec![("site".into(), "north".into())],
            ..minimal_connect(Version::V5)
        };
        assert_eq!(*c, expected);
        // Later packets are read as v5: a PUBACK with a reason code.
        assert_eq!(
            d.decode(&[0x40, 3, 0, 1, 0x10]),
            Ok(Some((Packet::Puback(ack(1, 0x10, None)), 5)))
        );
    }

    #[test]
    fn too_large_is_refused_before_the_body() {
        // A first packet (CONNECT) of 2 + 101 bytes, over 100: two bytes suffice to say so.
        let mut d = Decoder::new(100);
        assert_eq!(d.decode(&[0x10]), Ok(None));
        assert_eq!(d.needed(&[0x10]), None);
        assert_eq!(
            d.decode(&[0x10, 101]),
            Err(DecodeError::TooLarge {
                size: 103,
                max: 100
            })
        );
        assert_eq!(d.needed(&[0x10, 101]), None);

        let mut d = connected(Version::V311);
        d.max_packet_bytes = 100;
        // A PUBLISH of 3 + 1001 bytes: refused on its 3 header bytes.
        let e = d.decode(&[0x30, 0xE9, 0x07]).unwrap_err();
        assert_eq!(
            e,
            DecodeError::TooLarge {
                size: 1004,
                max: 100
            }
        );
        assert_eq!(e.reason_code(), reason::PACKET_TOO_LARGE);
        // Exactly the limit is taken; needed says how much to read.
        assert_eq!(d.decode(&[0x30, 98, 0, 1]), Ok(None));
        assert_eq!(d.needed(&[0x30, 98, 0, 1]), Some(100));
        let mut b = vec![0x30, 98, 0, 1, b't'];
        b.resize(100, b'x');
        let Ok(Some((Packet::Publish(p), 100))) = d.decode(&b) else {
            panic!("not a PUBLISH");
        };
        assert_eq!(p.payload.len(), 95);
    }

    #[test]
    fn a_fifth_remaining_length_byte_is_malformed() {
        let d = connected(Version::V5);
        // Four continuation bytes: the length would need a fifth.
        assert!(malformed(decode_one(&d, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF])));
        assert!(malformed(decode_one(
            &d,
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
        )));
        assert_eq!(d.needed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        // Three are a header still arriving.
        assert_eq!(decode_one(&d, &[0x30, 0xFF, 0xFF, 0xFF]), Ok(None));
        // The largest four-byte length is a size, over the limit.
        assert_eq!(
            decode_one(&d, &[0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(DecodeError::TooLarge {
                size: 268_435_460,
                max: LIMIT
            })
        );
    }

    #[test]
    fn the_first_packet_must_be_a_connect() {
        for first in [
            &[0xC0, 0x00][..],
            &[0x30],
            &[0x82, 0x06, 0, 1, 0, 1, b'a', 0],
            &[0x00],
        ] {
            let e = Decoder::new(LIMIT).decode(first).unwrap_err();
            assert!(matches!(e, DecodeError::Protocol(_)), "{first:?}: {e:?}");
            assert_eq!(e.reason_code(), reason::PROTOCOL_ERROR);
        }
        // And only the first.
        for version in [Version::V311, Version::V5] {
            let again = bytes(
                version,
                &Packet::Connect(Box::new(minimal_connect(version))),
            );
            assert!(protocol(decode_one(&connected(version), &again)));
            assert!(protocol(decode_one(&connected(version), &again[..1])));
        }
    }

    #[test]
    fn unsupported_protocol_levels() {
        let connect = |name: &str, level: u8| {
            packet(
                0x10,
                &cat(&[&s(name), &[level, 0x02, 0, 60], &s("sensor-1")]),
            )
        };
        let e = Decoder::new(LIMIT).decode(&connect("MQTT", 6)).unwrap_err();
        assert_eq!(e, DecodeError::UnsupportedVersion(6));
        assert_eq!(e.reason_code(), reason::UNSUPPORTED_PROTOCOL_VERSION);
        for level in [0, 1, 2, 3, 7, 255] {
            assert_eq!(
                Decoder::new(LIMIT).decode(&connect("MQTT", level)),
                Err(DecodeError::UnsupportedVersion(level))
            );
        }
        assert_eq!(
            Decoder::new(LIMIT).decode(&connect("MQIsdp", 4)),
            Err(DecodeError::UnsupportedVersion(4))
        );
        assert!(protocol(Decoder::new(LIMIT).decode(&connect("HTTP", 4))));
        assert!(malformed(
            Decoder::new(LIMIT).decode(&[0x10, 3, 0, 4, b'M'])
        ));
        // MQTT 3.1 is read as 3.1.1.
        let mut d = Decoder::new(LIMIT);
        let b = connect("MQIsdp", 3);
        let expected = Packet::Connect(Box::new(minimal_connect(Version::V311)));
        assert_eq!(d.decode(&b), Ok(Some((expected, b.len()))));
        assert_eq!(d.version(), Some(Version::V311));
    }

    #[test]
    fn reserved_flag_bits_are_malformed() {
        for version in [Version::V311, Version::V5] {
            let d = connected(version);
            let filter = cat(&[&[0, 1], &s("a/b"), &[1]]);
            // SUBSCRIBE, UNSUBSCRIBE and PUBREL must have flags 0b0010.
            assert!(
                malformed(decode_one(&d, &packet(0x80, &filter))),
                "{version:?}"
            );
            assert!(
                malformed(decode_one(&d, &packet(0x8A, &filter))),
                "{version:?}"
            );
            assert!(
                malformed(decode_one(&d, &packet(0xA0, &filter[..7]))),
                "{version:?}"
            );
            assert!(malformed(decode_one(&d, &[0x60, 2, 0, 1])), "{version:?}");
            // The others 0.
            for first in [0x41, 0x58, 0x74, 0xC1, 0xD2, 0xE8] {
                let b = if first >> 4 >= 0xC {
                    vec![first, 0]
                } else {
                    vec![first, 2, 0, 1]
                };
                assert!(malformed(decode_one(&d, &b)), "{version:?} {first:#x}");
            }
            // PUBLISH QoS 3.
            let body = cat(&[&s("a/b"), &[0, 1], b"x"]);
            assert!(
                malformed(decode_one(&d, &packet(0x36, &body))),
                "{version:?}"
            );
            // Packet type 0.
            assert!(malformed(decode_one(&d, &[0x00, 0])), "{version:?}");
        }
        // AUTH does not exist in 3.1.1.
        assert!(malformed(decode_one(&connected(Version::V311), &[0xF0, 0])));
        // QoS 0 with DUP: refused from a 3.1.1 client, taken from a v5 one.
        let body = cat(&[&s("a/b"), b"x"]);
        assert!(malformed(decode_one(
            &connected(Version::V311),
            &packet(0x38, &body)
        )));
        let body = cat(&[&s("a/b"), &[0], b"x"]);
        let Ok(Some((Packet::Publish(p), _))) =
            decode_one(&connected(Version::V5), &packet(0x38, &body))
        else {
            panic!("v5 QoS 0 DUP refused");
        };
        assert!(p.dup);
    }

    #[test]
    fn fields_must_fill_the_remaining_length() {
        for version in [Version::V311, Version::V5] {
            let d = connected(version);
            // PINGREQ, PINGRESP with a body.
            assert!(malformed(decode_one(&d, &[0xC0, 1, 0])), "{version:?}");
            assert!(malformed(decode_one(&d, &[0xD0, 1, 0])), "{version:?}");
            // A PUBACK too short for its identifier.
            assert!(malformed(decode_one(&d, &[0x40, 1, 0])), "{version:?}");
            assert!(malformed(decode_one(&d, &[0x40, 0])), "{version:?}");
            // A SUBSCRIBE whose filter runs past the packet.
            let b = packet(0x82, &cat(&[&[0, 1, 0, 9], b"a/b", &[1]]));
            assert!(malformed(decode_one(&d, &b)), "{version:?}");
        }
        let d = connected(Version::V311);
        // Bytes left after a 3.1.1 PUBACK's identifier, or in its DISCONNECT.
        assert!(malformed(decode_one(&d, &[0x40, 3, 0, 1, 0])));
        assert!(malformed(decode_one(&d, &[0xE0, 1, 0])));
        let d = connected(Version::V5);
        // A v5 PUBACK whose properties are shorter than they say.
        assert!(malformed(decode_one(&d, &[0x40, 5, 0, 1, 0, 3, 0x1F])));
        // Bytes after a v5 CONNACK's properties.
        assert!(malformed(decode_one(&d, &[0x20, 4, 0, 0, 0, 9])));
        // A 3.1.1 CONNECT with bytes after its fields.
        let mut b = bytes(
            Version::V311,
            &Packet::Connect(Box::new(minimal_connect(Version::V311))),
        );
        b[1] += 1;
        b.push(0);
        assert!(malformed(Decoder::new(LIMIT).decode(&b)));
    }

    #[test]
    fn strings_must_be_utf8_without_nul() {
        let connect = |version: u8, client_id: &[u8]| {
            let props: &[u8] = if version == 5 { &[0] } else { &[] };
            let id = cat(&[&(client_id.len() as u16).to_be_bytes(), client_id]);
            packet(
                0x10,
                &cat(&[&s("MQTT"), &[version, 0x02, 0, 60], props, &id]),
            )
        };
        for version in [4, 5] {
            assert!(malformed(
                Decoder::new(LIMIT).decode(&connect(version, b"a\0b"))
            ));
            assert!(malformed(
                Decoder::new(LIMIT).decode(&connect(version, b"a\xffb"))
            ));
            // A surrogate, encoded (MQTT 5.0 section 1.5.4).
            assert!(malformed(
                Decoder::new(LIMIT).decode(&connect(version, b"\xed\xa0\x80"))
            ));
            let ok = Decoder::new(LIMIT).decode(&connect(version, "capteur-é".as_bytes()));
            assert!(matches!(ok, Ok(Some(_))), "{ok:?}");
        }
        // A user name.
        let b = packet(
            0x10,
            &cat(&[&s("MQTT"), &[4, 0x82, 0, 60], &s("sensor-1"), &s("al\0ice")]),
        );
        assert!(malformed(Decoder::new(LIMIT).decode(&b)));
        // A topic name, in both versions.
        let body = cat(&[&s("a\0b"), b"x"]);
        assert!(malformed(decode_one(
            &connected(Version::V311),
            &packet(0x30, &body)
        )));
        let body = cat(&[&s("a\0b"), &[0], b"x"]);
        assert!(malformed(decode_one(
            &connected(Version::V5),
            &packet(0x30, &body)
        )));
        // A user property of a v5 PUBLISH, and of an ack whose user properties are dropped.
        let props = cat(&[&[0x26], &s("k"), &s("v\0")]);
        let body = cat(&[&s("a/b"), &[props.len() as u8], &props, b"x"]);
        assert!(malformed(decode_one(
            &connected(Version::V5),
            &packet(0x30, &body)
        )));
        let body = cat(&[&[0, 1, 0x10, props.len() as u8], &props]);
        assert!(malformed(decode_one(
            &connected(Version::V5),
            &packet(0x40, &body)
        )));
        // A content type.
        let props = cat(&[&[0x03], &s("text/\0")]);
        let body = cat(&[&s("a/b"), &[props.len() as u8], &props, b"x"]);
        assert!(malformed(decode_one(
            &connected(Version::V5),
            &packet(0x30, &body)
        )));
        // An empty 3.1.1 topic, or will topic.
        let body = cat(&[&s(""), b"x"]);
        assert!(malformed(decode_one(
            &connected(Version::V311),
            &packet(0x30, &body)
        )));
        let b = packet(
            0x10,
            &cat(&[
                &s("MQTT"),
                &[4, 0x06, 0, 60],
                &s("sensor-1"),
                &s(""),
                &s("bye"),
            ]),
        );
        assert!(malformed(Decoder::new(LIMIT).decode(&b)));
    }

    #[test]
    fn connect_flag_rules() {
        let connect = |version: u8, flags: u8, rest: &[u8]| {
            let props: &[u8] = if version == 5 { &[0] } else { &[] };
            packet(
                0x10,
                &cat(&[
                    &s("MQTT"),
                    &[version, flags, 0, 60],
                    props,
                    &s("sensor-1"),
                    rest,
                ]),
            )
        };
        for version in [4, 5] {
            // Will Retain without a will (MQTT-3.1.2-15, v5 MQTT-3.1.2-13).
            assert!(malformed(Decoder::new(LIMIT).decode(&connect(
                version,
                0x22,
                &[]
            ))));
            // Will QoS without a will, Will QoS 3, the reserved bit.
            assert!(malformed(Decoder::new(LIMIT).decode(&connect(
                version,
                0x0A,
                &[]
            ))));
            assert!(malformed(Decoder::new(LIMIT).decode(&connect(
                version,
                0x03,
                &[]
            ))));
        }
        let will = cat(&[&s("dead/x"), &s("bye")]);
        assert!(malformed(
            Decoder::new(LIMIT).decode(&connect(4, 0x1E, &will))
        ));
        // A password without a user name: refused in 3.1.1 (MQTT-3.1.2-22), taken in v5.
        assert!(malformed(Decoder::new(LIMIT).decode(&connect(
            4,
            0x42,
            &s("secret")
        ))));
        let Ok(Some((Packet::Connect(c), _))) =
            Decoder::new(LIMIT).decode(&connect(5, 0x42, &s("secret")))
        else {
            panic!("v5 password without user name refused");
        };
        assert_eq!(
            (c.username, c.password),
            (None, Some(Bytes::from_static(b"secret")))
        );
    }

    #[test]
    fn v5_protocol_errors() {
        let connect = |props: &[u8]| {
            packet(
                0x10,
                &cat(&[
                    &s("MQTT"),
                    &[5, 0x02, 0, 60, props.len() as u8],
                    props,
                    &s("sensor-1"),
                ]),
            )
        };
        // Receive Maximum 0, Maximum Packet Size 0, a property twice, Authentication Data
        // without a method, a bad Request Problem Information.
        for props in [
            &[0x21, 0, 0][..],
            &[0x27, 0, 0, 0, 0],
            &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2],
            &[0x16, 0, 1, 7],
            &[0x17, 2],
        ] {
            assert!(
                protocol(Decoder::new(LIMIT).decode(&connect(props))),
                "{props:?}"
            );
        }
        // A property CONNECT does not take (Topic Alias): malformed.
        assert!(malformed(
            Decoder::new(LIMIT).decode(&connect(&[0x23, 0, 1]))
        ));
        let d = connected(Version::V5);
        // A client's PUBLISH with a Subscription Identifier.
        let body = cat(&[&s("a/b"), &[2, 0x0B, 1], b"x"]);
        assert!(protocol(decode_one(&d, &packet(0x30, &body))));
        // SUBSCRIBE: Subscription Identifier 0, No Local on a shared subscription, no filter.
        let b = packet(0x82, &cat(&[&[0, 1, 2, 0x0B, 0], &s("a/b"), &[1]]));
        assert!(protocol(decode_one(&d, &b)));
        let b = packet(0x82, &cat(&[&[0, 1, 0], &s("$share/g/a"), &[0b0000_0101]]));
        assert!(protocol(decode_one(&d, &b)));
        assert!(protocol(decode_one(&d, &[0x82, 3, 0, 1, 0])));
        assert!(protocol(decode_one(
            &connected(Version::V311),
            &[0x82, 2, 0, 1]
        )));
        // SUBSCRIBE options: reserved bits, Retain Handling 3.
        for options in [0b0100_0001, 0b0011_0001] {
            let b = packet(0x82, &cat(&[&[0, 1, 0], &s("a/b"), &[options]]));
            assert!(malformed(decode_one(&d, &b)), "{options:#b}");
        }
    }

    #[test]
    fn encode_refuses_what_the_wire_cannot_carry() {
        let long = "a".repeat(MAX_FIELD + 1);
        for version in [Version::V311, Version::V5] {
            let mut out = vec![7];
            let p = Packet::Publish(Publish {
                topic: long.clone(),
                ..Publish::default()
            });
            assert!(encode(version, &p, &mut out).is_err());
            let p = Packet::Publish(publish(1, None, b""));
            assert!(encode(version, &p, &mut out).is_err());
            let p = Packet::Publish(publish(0, Some(1), b""));
            assert!(encode(version, &p, &mut out).is_err());
            let p = Packet::Publish(publish(3, Some(1), b""));
            assert!(encode(version, &p, &mut out).is_err());
            let p = Packet::Puback(ack(0, 0, None));
            assert!(encode(version, &p, &mut out).is_err());
            let p = Packet::Suback(FilterAck {
                pid: 0,
                ..FilterAck::default()
            });
            assert!(encode(version, &p, &mut out).is_err());
            assert_eq!(out, [7], "{version:?}: nothing appended");
        }
        let mut out = Vec::new();
        let v = Version::V5;
        assert!(
            encode(
                v,
                &Packet::Puback(ack(1, reason::TOPIC_FILTER_INVALID, None)),
                &mut out
            )
            .is_err()
        );
        let connack = |props| {
            Packet::Connack(Connack {
                props,
                ..Connack::default()
            })
        };
        let reason_string = Some(long.clone());
        let p = connack(ConnackProps {
            reason_string,
            ..ConnackProps::default()
        });
        assert!(encode(v, &p, &mut out).is_err());
        let p = connack(ConnackProps {
            maximum_qos: Some(3),
            ..ConnackProps::default()
        });
        assert!(encode(v, &p, &mut out).is_err());
        let p = Packet::Publish(Publish {
            props: PublishProps {
                subscription_ids: vec![0],
                ..PublishProps::default()
            },
            ..publish(0, None, b"")
        });
        assert!(encode(v, &p, &mut out).is_err());
        let p = Packet::Publish(Publish {
            props: PublishProps {
                user: vec![(long.clone(), String::new())],
                ..PublishProps::default()
            },
            ..publish(0, None, b"")
        });
        assert!(encode(v, &p, &mut out).is_err());
        assert!(out.is_empty());
        // Maximum QoS 2 is said by leaving it out.
        let p = connack(ConnackProps {
            maximum_qos: Some(2),
            ..ConnackProps::default()
        });
        assert_eq!(bytes(v, &p), [0x20, 3, 0, 0, 0]);
    }

    #[test]
    fn packets_back_to_back_in_one_buffer() {
        let v = Version::V5;
        let mut stream = bytes(v, &Packet::Connect(Box::new(minimal_connect(v))));
        let packets = [
            Packet::Publish(publish(1, Some(1), b"one")),
            Packet::Pingreq,
            Packet::Publish(publish(0, None, b"two")),
            Packet::Disconnect(Disconnect::default()),
        ];
        for p in &packets {
            stream.extend(bytes(v, p));
        }
        let mut d = Decoder::new(LIMIT);
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((p, n)) = d.decode(&stream[at..]).unwrap() {
            got.push(p);
            at += n;
        }
        assert_eq!(at, stream.len());
        assert_eq!(got[1..], packets);
    }
}
