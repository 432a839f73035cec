//! MQTT packets, version-neutral: what the MQTT front-end's session logic reads and writes,
//! whichever of MQTT 3.1.1 (protocol level 4, also 3.1's level 3) and MQTT 5.0 (level 5) the
//! client speaks. The bytes are the `mqtt-proto` crate's business; this module frames them
//! (a packet's size is known, and bounded, from its fixed header before its body is buffered),
//! learns the client's version from its CONNECT, and maps both versions' packets to one shape.
//!
//! Sans-IO: [`Decoder::decode`] takes bytes and returns packets; [`encode`] appends a packet's
//! bytes to a buffer.

use bytes::Bytes;

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
    /// Payload Format Indicator: `Some(true)` when the payload is UTF-8 text.
    pub payload_utf8: Option<bool>,
    /// Message Expiry Interval, in seconds.
    pub message_expiry: Option<u32>,
    /// Content Type.
    pub content_type: Option<String>,
    /// Response Topic: where the answer to this request goes.
    pub response_topic: Option<String>,
    /// Correlation Data: the requester's tag, returned with the answer.
    pub correlation_data: Option<Bytes>,
    /// User Properties, in order.
    pub user: Vec<UserProperty>,
    /// Subscription Identifiers of the subscriptions that matched (server to client only).
    pub subscription_ids: Vec<u32>,
    /// Topic Alias (section 3.3.2.3.4).
    pub topic_alias: Option<u16>,
}

/// A PUBLISH packet (MQTT 3.1.1 section 3.3, MQTT 5.0 section 3.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    /// The topic name; empty when a v5 client sends only a topic alias.
    pub topic: String,
    /// 0, 1 or 2.
    pub qos: u8,
    /// The packet identifier: `Some` exactly when `qos` > 0.
    pub pid: Option<u16>,
    pub retain: bool,
    pub dup: bool,
    pub payload: Bytes,
    pub props: PublishProps,
}

/// The will of a CONNECT (MQTT 5.0 section 3.1.2.5, 3.1.3.2-3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: PublishProps,
    /// Will Delay Interval, in seconds (MQTT 5.0 section 3.1.3.2.2).
    pub delay: Option<u32>,
}

/// A CONNECT packet (MQTT 5.0 section 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    /// May be empty (the server assigns one, or refuses: section 3.1.3.1).
    pub client_id: String,
    /// MQTT 3.1.1's Clean Session, MQTT 5.0's Clean Start.
    pub clean_start: bool,
    /// Keep Alive, in seconds; 0 turns the mechanism off.
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// Session Expiry Interval, in seconds (v5; `u32::MAX` never expires).
    pub session_expiry: Option<u32>,
    /// Receive Maximum: QoS 1 and 2 publishes the client takes unacknowledged (v5).
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size the client accepts, in bytes (v5).
    pub maximum_packet_size: Option<u32>,
    /// Topic Alias Maximum the client accepts from the server (v5).
    pub topic_alias_maximum: Option<u16>,
    pub request_response_info: Option<bool>,
    pub request_problem_info: Option<bool>,
    /// Authentication Method (enhanced authentication, section 4.12).
    pub auth_method: Option<String>,
    pub user: Vec<UserProperty>,
}

/// The properties of a CONNACK (MQTT 5.0 section 3.2.2.3); ignored for MQTT 3.1.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnackProps {
    pub session_expiry: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_id: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub wildcard_available: Option<bool>,
    pub subscription_ids_available: Option<bool>,
    pub shared_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_info: Option<String>,
}

/// A CONNACK. `code` is an MQTT 5.0 reason code (section 3.2.2.2); for MQTT 3.1.1 it is
/// mapped to the nearest return code (section 3.2.2.3: 0 accepted, 1 unacceptable protocol
/// version, 2 identifier rejected, 3 server unavailable, 4 bad user name or password,
/// 5 not authorized).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connack {
    pub session_present: bool,
    pub code: u8,
    pub props: ConnackProps,
}

/// Subscription Options (MQTT 5.0 section 3.8.3.1); MQTT 3.1.1 has only the QoS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS.
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// Retain Handling: 0 send retained at subscribe, 1 only if the subscription is new, 2 never.
    pub retain_handling: u8,
}

/// A SUBSCRIBE (MQTT 5.0 section 3.8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscribe {
    pub pid: u16,
    /// Subscription Identifier (v5).
    pub subscription_id: Option<u32>,
    pub filters: Vec<(String, SubOptions)>,
    pub user: Vec<UserProperty>,
}

/// An acknowledgement carrying one reason code per topic filter: SUBACK, UNSUBACK (MQTT 5.0
/// sections 3.9 and 3.11). For MQTT 3.1.1 a SUBACK's codes above 2 become 0x80 and an UNSUBACK
/// carries none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterAck {
    pub pid: u16,
    pub codes: Vec<u8>,
    pub reason_string: Option<String>,
}

/// An acknowledgement of a QoS 1 or 2 PUBLISH: PUBACK, PUBREC, PUBREL, PUBCOMP (MQTT 5.0 sections
/// 3.4-3.7). `code` is the v5 reason code (0 success); MQTT 3.1.1 carries none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PubAck {
    pub pid: u16,
    pub code: u8,
    pub reason_string: Option<String>,
}

/// A DISCONNECT (MQTT 5.0 section 3.14); MQTT 3.1.1's carries nothing (a server never sends it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u8,
    /// Session Expiry Interval, in seconds, replacing the CONNECT's.
    pub session_expiry: Option<u32>,
    pub reason_string: Option<String>,
}

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    Connack(Connack),
    Publish(Publish),
    Puback(PubAck),
    Pubrec(PubAck),
    Pubrel(PubAck),
    Pubcomp(PubAck),
    Subscribe(Subscribe),
    Suback(FilterAck),
    Unsubscribe(Unsubscribe),
    Unsuback(FilterAck),
    Pingreq,
    Pingresp,
    Disconnect(Disconnect),
    /// AUTH (v5 section 3.15): its reason code; hub supports no enhanced authentication.
    Auth(u8),
}

/// An UNSUBSCRIBE (MQTT 5.0 section 3.10).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pid: u16,
    pub filters: Vec<String>,
}

/// MQTT 5.0 reason codes this hub sends (section 2.4).
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;
}

/// Why bytes from a client are not a packet this hub takes. Each maps to the v5 reason code of
/// the DISCONNECT (or CONNACK, for the first packet) the client is sent before it is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The fixed header announces a packet of `size` bytes, over `max` (MQTT 5.0 section
    /// 3.2.2.3.6: reason 0x95 Packet Too Large). Known before the body is read.
    TooLarge { size: usize, max: usize },
    /// The bytes break the packet's syntax (reason 0x81 Malformed Packet).
    Malformed(String),
    /// The first packet is not a CONNECT, or a second CONNECT came (section 3.1: reason 0x82
    /// Protocol Error).
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

/// Splits a client's byte stream into packets.
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
    /// fixed header is complete.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Packet, usize)>, DecodeError> {
        let _ = buf;
        todo!()
    }

    /// How many bytes the packet at the front of `buf` takes in all, once its fixed header is
    /// complete (at most 5 bytes); `None` before. Never more than the limit (a larger packet is
    /// an error of [`decode`](Self::decode)).
    pub fn needed(&self, buf: &[u8]) -> Option<usize> {
        let _ = buf;
        todo!()
    }
}

/// Appends `packet`'s bytes, as `version` writes it, to `out`. Properties a version lacks are
/// left out. Errors: a field over its wire limit (a string over 65535 bytes, a packet over
/// 268435455 bytes).
pub fn encode(version: Version, packet: &Packet, out: &mut Vec<u8>) -> Result<(), String> {
    let _ = (version, packet, out);
    todo!()
}
