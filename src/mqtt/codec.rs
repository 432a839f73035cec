//! MQTT packets, version-neutral: what the MQTT front-end's session logic reads and writes,
//! whichever of MQTT 3.1.1 (protocol level 4, also 3.1's level 3) and MQTT 5.0 (level 5) the
//! client speaks. The bytes are the `mqtt-proto` crate's business; this module frames them
//! (a packet's size is known, and bounded, from its fixed header before its body is buffered),
//! learns the client's version from its CONNECT, and maps both versions' packets to one shape.
//!
//! Sans-IO: [`Decoder::decode`] takes bytes and returns packets; [`encode`] appends a packet's
//! bytes to a buffer.
//!
//! Fields carry the MQTT 5.0 specification's names; each type names the section that defines
//! them.
#![allow(missing_docs)]

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

/// The fixed header at the front of `buf` (MQTT 5.0 section 2.1.1, 1.5.5): the packet's total
/// size, once its remaining length is complete.
fn total_size(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(1 + (i + 1) + remaining));
        }
    }
    Err(DecodeError::Malformed(
        "the remaining length takes more than 4 bytes".into(),
    ))
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
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let Some(total) = total_size(buf)? else {
            return Ok(None);
        };
        if total > self.max_packet_bytes {
            return Err(DecodeError::TooLarge {
                size: total,
                max: self.max_packet_bytes,
            });
        }
        if buf.len() < total {
            return Ok(None);
        }
        let bytes = &buf[..total];
        let is_connect = first >> 4 == 1;
        let version = match self.version {
            Some(_) if is_connect => {
                return Err(DecodeError::Protocol("a second CONNECT".into()));
            }
            Some(v) => v,
            None if !is_connect => {
                return Err(DecodeError::Protocol(
                    "the first packet is not a CONNECT".into(),
                ));
            }
            None => connect_version(bytes)?,
        };
        let malformed = |e: String| DecodeError::Malformed(e);
        let packet = match version {
            Version::V311 => match mqtt_proto::v3::Packet::decode(bytes) {
                Ok(Some(p)) => from_v3(p),
                Ok(None) => return Err(malformed("the packet ends early".into())),
                Err(e) => return Err(malformed(e.to_string())),
            },
            Version::V5 => match mqtt_proto::v5::Packet::decode(bytes) {
                Ok(Some(p)) => from_v5(p)?,
                Ok(None) => return Err(malformed("the packet ends early".into())),
                Err(e) => return Err(malformed(e.to_string())),
            },
        };
        if let Packet::Publish(p) = &packet {
            if p.payload.len() + 2 > total {
                return Err(malformed("the payload is longer than the packet".into()));
            }
        }
        self.version = Some(version);
        Ok(Some((packet, total)))
    }

    /// How many bytes the packet at the front of `buf` takes in all, once its fixed header is
    /// complete (at most 5 bytes); `None` before. Never more than the limit (a larger packet is
    /// an error of [`decode`](Self::decode)).
    pub fn needed(&self, buf: &[u8]) -> Option<usize> {
        total_size(buf)
            .ok()
            .flatten()
            .map(|t| t.min(self.max_packet_bytes))
    }
}

/// The version a CONNECT asks for: its protocol name and level (MQTT 5.0 section 3.1.2.1-2).
fn connect_version(bytes: &[u8]) -> Result<Version, DecodeError> {
    let mut at = 1;
    while bytes.get(at).is_some_and(|b| b & 0x80 != 0) {
        at += 1;
    }
    at += 1;
    let len = bytes
        .get(at..at + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or_else(|| DecodeError::Malformed("CONNECT without a protocol name".into()))?;
    let name = bytes
        .get(at + 2..at + 2 + len)
        .ok_or_else(|| DecodeError::Malformed("CONNECT without a protocol name".into()))?;
    let level = *bytes
        .get(at + 2 + len)
        .ok_or_else(|| DecodeError::Malformed("CONNECT without a protocol level".into()))?;
    match (name, level) {
        (b"MQTT", 4) | (b"MQIsdp", 3) => Ok(Version::V311),
        (b"MQTT", 5) => Ok(Version::V5),
        (b"MQTT" | b"MQIsdp", level) => Err(DecodeError::UnsupportedVersion(level)),
        _ => Err(DecodeError::Protocol(format!(
            "protocol name {:?} is not MQTT",
            String::from_utf8_lossy(name)
        ))),
    }
}

fn qos_pid(qp: mqtt_proto::QosPid) -> (u8, Option<u16>) {
    match qp {
        mqtt_proto::QosPid::Level0 => (0, None),
        mqtt_proto::QosPid::Level1(p) => (1, Some(p.value())),
        mqtt_proto::QosPid::Level2(p) => (2, Some(p.value())),
    }
}

fn user(props: &[mqtt_proto::v5::UserProperty]) -> Vec<UserProperty> {
    props
        .iter()
        .map(|u| (u.name.to_string(), u.value.to_string()))
        .collect()
}

fn from_v3(p: mqtt_proto::v3::Packet) -> Packet {
    use mqtt_proto::v3::Packet as P;
    let ack = |pid: mqtt_proto::Pid| PubAck {
        pid: pid.value(),
        ..PubAck::default()
    };
    match p {
        P::Connect(c) => Packet::Connect(Box::new(Connect {
            version: Version::V311,
            client_id: c.client_id.to_string(),
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            username: c.username.map(|u| u.to_string()),
            password: c.password,
            will: c.last_will.map(|w| Will {
                topic: w.topic_name.to_string(),
                payload: w.message,
                qos: w.qos as u8,
                retain: w.retain,
                props: PublishProps::default(),
                delay: None,
            }),
            session_expiry: None,
            receive_maximum: None,
            maximum_packet_size: None,
            topic_alias_maximum: None,
            request_response_info: None,
            request_problem_info: None,
            auth_method: None,
            user: Vec::new(),
        })),
        P::Connack(c) => Packet::Connack(Connack {
            session_present: c.session_present,
            code: c.code as u8,
            props: ConnackProps::default(),
        }),
        P::Publish(p) => {
            let (qos, pid) = qos_pid(p.qos_pid);
            Packet::Publish(Publish {
                topic: p.topic_name.to_string(),
                qos,
                pid,
                retain: p.retain,
                dup: p.dup,
                payload: p.payload,
                props: PublishProps::default(),
            })
        }
        P::Puback(pid) => Packet::Puback(ack(pid)),
        P::Pubrec(pid) => Packet::Pubrec(ack(pid)),
        P::Pubrel(pid) => Packet::Pubrel(ack(pid)),
        P::Pubcomp(pid) => Packet::Pubcomp(ack(pid)),
        P::Subscribe(s) => Packet::Subscribe(Subscribe {
            pid: s.pid.value(),
            subscription_id: None,
            filters: s
                .topics
                .into_iter()
                .map(|(f, q)| {
                    (
                        f.to_string(),
                        SubOptions {
                            qos: q as u8,
                            ..SubOptions::default()
                        },
                    )
                })
                .collect(),
            user: Vec::new(),
        }),
        P::Suback(s) => Packet::Suback(FilterAck {
            pid: s.pid.value(),
            codes: Vec::new(),
            reason_string: None,
        }),
        P::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pid: u.pid.value(),
            filters: u.topics.into_iter().map(|f| f.to_string()).collect(),
        }),
        P::Unsuback(pid) => Packet::Unsuback(FilterAck {
            pid: pid.value(),
            ..FilterAck::default()
        }),
        P::Pingreq => Packet::Pingreq,
        P::Pingresp => Packet::Pingresp,
        P::Disconnect => Packet::Disconnect(Disconnect::default()),
    }
}

fn publish_props(p: &mqtt_proto::v5::PublishProperties) -> PublishProps {
    PublishProps {
        payload_utf8: p.payload_is_utf8,
        message_expiry: p.message_expiry_interval,
        content_type: p.content_type.as_ref().map(|c| c.to_string()),
        response_topic: p.response_topic.as_ref().map(|t| t.to_string()),
        correlation_data: p.correlation_data.clone(),
        user: user(&p.user_properties),
        subscription_ids: p.subscription_id.map(|i| i.value()).into_iter().collect(),
        topic_alias: p.topic_alias,
    }
}

fn from_v5(p: mqtt_proto::v5::Packet) -> Result<Packet, DecodeError> {
    use mqtt_proto::v5::Packet as P;
    Ok(match p {
        P::Connect(c) => {
            let pr = &c.properties;
            Packet::Connect(Box::new(Connect {
                version: Version::V5,
                client_id: c.client_id.to_string(),
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                username: c.username.as_ref().map(|u| u.to_string()),
                password: c.password.clone(),
                will: c.last_will.as_ref().map(|w| Will {
                    topic: w.topic_name.to_string(),
                    payload: w.payload.clone(),
                    qos: w.qos as u8,
                    retain: w.retain,
                    props: PublishProps {
                        payload_utf8: w.properties.payload_is_utf8,
                        message_expiry: w.properties.message_expiry_interval,
                        content_type: w.properties.content_type.as_ref().map(|c| c.to_string()),
                        response_topic: w.properties.response_topic.as_ref().map(|t| t.to_string()),
                        correlation_data: w.properties.correlation_data.clone(),
                        user: user(&w.properties.user_properties),
                        ..PublishProps::default()
                    },
                    delay: w.properties.delay_interval,
                }),
                session_expiry: pr.session_expiry_interval,
                receive_maximum: pr.receive_max,
                maximum_packet_size: pr.max_packet_size,
                topic_alias_maximum: pr.topic_alias_max,
                request_response_info: pr.request_response_info,
                request_problem_info: pr.request_problem_info,
                auth_method: pr.auth_method.as_ref().map(|m| m.to_string()),
                user: user(&pr.user_properties),
            }))
        }
        P::Connack(c) => Packet::Connack(Connack {
            session_present: c.session_present,
            code: c.reason_code as u8,
            props: ConnackProps::default(),
        }),
        P::Publish(p) => {
            let (qos, pid) = qos_pid(p.qos_pid);
            Packet::Publish(Publish {
                topic: p.topic_name.to_string(),
                qos,
                pid,
                retain: p.retain,
                dup: p.dup,
                props: publish_props(&p.properties),
                payload: p.payload,
            })
        }
        P::Puback(a) => Packet::Puback(PubAck {
            pid: a.pid.value(),
            code: a.reason_code as u8,
            reason_string: None,
        }),
        P::Pubrec(a) => Packet::Pubrec(PubAck {
            pid: a.pid.value(),
            code: a.reason_code as u8,
            reason_string: None,
        }),
        P::Pubrel(a) => Packet::Pubrel(PubAck {
            pid: a.pid.value(),
            code: a.reason_code as u8,
            reason_string: None,
        }),
        P::Pubcomp(a) => Packet::Pubcomp(PubAck {
            pid: a.pid.value(),
            code: a.reason_code as u8,
            reason_string: None,
        }),
        P::Subscribe(s) => Packet::Subscribe(Subscribe {
            pid: s.pid.value(),
            subscription_id: s.properties.subscription_id.map(|i| i.value()),
            filters: s
                .topics
                .iter()
                .map(|(f, o)| {
                    (
                        f.to_string(),
                        SubOptions {
                            qos: o.max_qos as u8,
                            no_local: o.no_local,
                            retain_as_published: o.retain_as_published,
                            retain_handling: o.retain_handling as u8,
                        },
                    )
                })
                .collect(),
            user: user(&s.properties.user_properties),
        }),
        P::Suback(s) => Packet::Suback(FilterAck {
            pid: s.pid.value(),
            ..FilterAck::default()
        }),
        P::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pid: u.pid.value(),
            filters: u.topics.iter().map(|f| f.to_string()).collect(),
        }),
        P::Unsuback(u) => Packet::Unsuback(FilterAck {
            pid: u.pid.value(),
            ..FilterAck::default()
        }),
        P::Pingreq => Packet::Pingreq,
        P::Pingresp => Packet::Pingresp,
        P::Disconnect(d) => Packet::Disconnect(Disconnect {
            code: d.reason_code as u8,
            session_expiry: d.properties.session_expiry_interval,
            reason_string: d.properties.reason_string.as_ref().map(|r| r.to_string()),
        }),
        P::Auth(a) => Packet::Auth(a.reason_code as u8),
    })
}

fn pid(p: u16) -> Result<mqtt_proto::Pid, String> {
    mqtt_proto::Pid::try_from(p).map_err(|e| e.to_string())
}

fn qos(q: u8) -> Result<mqtt_proto::QoS, String> {
    mqtt_proto::QoS::from_u8(q).map_err(|e| e.to_string())
}

fn arc(s: &Option<String>) -> Option<std::sync::Arc<str>> {
    s.as_deref().map(std::sync::Arc::from)
}

/// The MQTT 3.1.1 CONNACK return code nearest to a v5 reason code (MQTT 3.1.1 section 3.2.2.3).
fn v3_return_code(code: u8) -> mqtt_proto::v3::ConnectReturnCode {
    use mqtt_proto::v3::ConnectReturnCode as C;
    match code {
        0 => C::Accepted,
        reason::UNSUPPORTED_PROTOCOL_VERSION => C::UnacceptableProtocolVersion,
        reason::CLIENT_IDENTIFIER_NOT_VALID => C::IdentifierRejected,
        reason::BAD_USER_NAME_OR_PASSWORD => C::BadUserNameOrPassword,
        reason::NOT_AUTHORIZED | reason::BAD_AUTHENTICATION_METHOD => C::NotAuthorized,
        _ => C::ServerUnavailable,
    }
}

/// Appends `packet`'s bytes, as `version` writes it, to `out`. Properties a version lacks are
/// left out. Errors: a field over its wire limit (a string over 65535 bytes, a packet over
/// 268435455 bytes), or a value the version cannot carry.
pub fn encode(version: Version, packet: &Packet, out: &mut Vec<u8>) -> Result<(), String> {
    match version {
        Version::V311 => {
            let Some(p) = to_v3(packet)? else {
                return Ok(());
            };
            let bytes = p.encode().map_err(|e| e.to_string())?;
            out.extend_from_slice(bytes.as_ref());
        }
        Version::V5 => {
            let bytes = to_v5(packet)?.encode().map_err(|e| e.to_string())?;
            out.extend_from_slice(bytes.as_ref());
        }
    }
    Ok(())
}

/// The MQTT 3.1.1 form of `packet`; `None` for what 3.1.1 has no packet for (a server's
/// DISCONNECT, AUTH).
fn to_v3(packet: &Packet) -> Result<Option<mqtt_proto::v3::Packet>, String> {
    use mqtt_proto::v3;
    Ok(Some(match packet {
        Packet::Connack(c) => v3::Packet::Connack(v3::Connack {
            session_present: c.session_present,
            code: v3_return_code(c.code),
        }),
        Packet::Publish(p) => {
            let qos_pid = match (p.qos, p.pid) {
                (0, _) => mqtt_proto::QosPid::Level0,
                (1, Some(id)) => mqtt_proto::QosPid::Level1(pid(id)?),
                (2, Some(id)) => mqtt_proto::QosPid::Level2(pid(id)?),
                _ => return Err("a QoS 1 or 2 PUBLISH needs a packet identifier".into()),
            };
            let mut publish = v3::Publish::new(
                qos_pid,
                mqtt_proto::TopicName::try_from(p.topic.as_str()).map_err(|e| e.to_string())?,
                p.payload.clone(),
            );
            publish.dup = p.dup;
            publish.retain = p.retain;
            v3::Packet::Publish(publish)
        }
        Packet::Puback(a) => v3::Packet::Puback(pid(a.pid)?),
        Packet::Pubrec(a) => v3::Packet::Pubrec(pid(a.pid)?),
        Packet::Pubrel(a) => v3::Packet::Pubrel(pid(a.pid)?),
        Packet::Pubcomp(a) => v3::Packet::Pubcomp(pid(a.pid)?),
        Packet::Suback(s) => v3::Packet::Suback(v3::Suback {
            pid: pid(s.pid)?,
            topics: s
                .codes
                .iter()
                .map(|c| match c {
                    0 => v3::SubscribeReturnCode::MaxLevel0,
                    1 => v3::SubscribeReturnCode::MaxLevel1,
                    2 => v3::SubscribeReturnCode::MaxLevel2,
                    _ => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        }),
        Packet::Unsuback(s) => v3::Packet::Unsuback(pid(s.pid)?),
        Packet::Pingreq => v3::Packet::Pingreq,
        Packet::Pingresp => v3::Packet::Pingresp,
        Packet::Connect(c) => {
            let mut connect = v3::Connect::new(
                std::sync::Arc::<str>::from(c.client_id.as_str()),
                c.keep_alive,
            );
            connect.clean_session = c.clean_start;
            connect.username = c.username.as_deref().map(std::sync::Arc::<str>::from);
            connect.password = c.password.clone();
            v3::Packet::Connect(connect)
        }
        Packet::Subscribe(s) => v3::Packet::Subscribe(v3::Subscribe::new(
            pid(s.pid)?,
            s.filters
                .iter()
                .map(|(f, o)| {
                    Ok((
                        mqtt_proto::TopicFilter::try_from(f.as_str()).map_err(|e| e.to_string())?,
                        qos(o.qos)?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        )),
        Packet::Unsubscribe(u) => v3::Packet::Unsubscribe(v3::Unsubscribe::new(
            pid(u.pid)?,
            u.filters
                .iter()
                .map(|f| mqtt_proto::TopicFilter::try_from(f.as_str()).map_err(|e| e.to_string()))
                .collect::<Result<_, String>>()?,
        )),
        Packet::Disconnect(_) => v3::Packet::Disconnect,
        Packet::Auth(_) => return Ok(None),
    }))
}

fn to_v5(packet: &Packet) -> Result<mqtt_proto::v5::Packet, String> {
    use mqtt_proto::v5;
    let user_props = |u: &[UserProperty]| -> Vec<v5::UserProperty> {
        u.iter()
            .map(|(n, v)| v5::UserProperty {
                name: std::sync::Arc::from(n.as_str()),
                value: std::sync::Arc::from(v.as_str()),
            })
            .collect()
    };
    Ok(match packet {
        Packet::Connack(c) => {
            let code = v5::ConnectReasonCode::from_u8(c.code)
                .ok_or_else(|| format!("{:#x} is no CONNACK reason code", c.code))?;
            let mut ack = v5::Connack::new(c.session_present, code);
            let p = &c.props;
            let props = &mut ack.properties;
            props.session_expiry_interval = p.session_expiry;
            props.receive_max = p.receive_maximum;
            props.max_qos = p.maximum_qos.map(qos).transpose()?;
            props.retain_available = p.retain_available;
            props.max_packet_size = p.maximum_packet_size;
            props.assigned_client_id = arc(&p.assigned_client_id);
            props.topic_alias_max = p.topic_alias_maximum;
            props.reason_string = arc(&p.reason_string);
            props.wildcard_subscription_available = p.wildcard_available;
            props.subscription_id_available = p.subscription_ids_available;
            props.shared_subscription_available = p.shared_available;
            props.server_keep_alive = p.server_keep_alive;
            props.response_info = arc(&p.response_info);
            v5::Packet::Connack(ack)
        }
        Packet::Publish(p) => {
            let qos_pid = match (p.qos, p.pid) {
                (0, _) => mqtt_proto::QosPid::Level0,
                (1, Some(id)) => mqtt_proto::QosPid::Level1(pid(id)?),
                (2, Some(id)) => mqtt_proto::QosPid::Level2(pid(id)?),
                _ => return Err("a QoS 1 or 2 PUBLISH needs a packet identifier".into()),
            };
            let mut publish = v5::Publish::new(
                qos_pid,
                mqtt_proto::TopicName::try_from(p.topic.as_str()).map_err(|e| e.to_string())?,
                p.payload.clone(),
            );
            publish.dup = p.dup;
            publish.retain = p.retain;
            let pr = &p.props;
            let props = &mut publish.properties;
            props.payload_is_utf8 = pr.payload_utf8;
            props.message_expiry_interval = pr.message_expiry;
            props.topic_alias = pr.topic_alias;
            props.response_topic = pr
                .response_topic
                .as_deref()
                .map(mqtt_proto::TopicName::try_from)
                .transpose()
                .map_err(|e| e.to_string())?;
            props.correlation_data = pr.correlation_data.clone();
            props.user_properties = user_props(&pr.user);
            props.subscription_id = pr
                .subscription_ids
                .first()
                .map(|&i| v5::VarByteInt::try_from(i).map_err(|e| e.to_string()))
                .transpose()?;
            props.content_type = arc(&pr.content_type);
            v5::Packet::Publish(publish)
        }
        Packet::Puback(a) => {
            let code = v5::PubackReasonCode::from_u8(a.code)
                .ok_or_else(|| format!("{:#x} is no PUBACK reason code", a.code))?;
            let mut ack = v5::Puback::new(pid(a.pid)?, code);
            ack.properties.reason_string = arc(&a.reason_string);
            v5::Packet::Puback(ack)
        }
        Packet::Pubrec(a) => {
            let code = v5::PubrecReasonCode::from_u8(a.code)
                .ok_or_else(|| format!("{:#x} is no PUBREC reason code", a.code))?;
            let mut ack = v5::Pubrec::new(pid(a.pid)?, code);
            ack.properties.reason_string = arc(&a.reason_string);
            v5::Packet::Pubrec(ack)
        }
        Packet::Pubrel(a) => {
            let code = v5::PubrelReasonCode::from_u8(a.code)
                .ok_or_else(|| format!("{:#x} is no PUBREL reason code", a.code))?;
            let ack = v5::Pubrel::new(pid(a.pid)?, code);
            v5::Packet::Pubrel(ack)
        }
        Packet::Pubcomp(a) => {
            let code = v5::PubcompReasonCode::from_u8(a.code)
                .ok_or_else(|| format!("{:#x} is no PUBCOMP reason code", a.code))?;
            let ack = v5::Pubcomp::new(pid(a.pid)?, code);
            v5::Packet::Pubcomp(ack)
        }
        Packet::Suback(s) => {
            let codes = s
                .codes
                .iter()
                .map(|&c| {
                    v5::SubscribeReasonCode::from_u8(c)
                        .ok_or_else(|| format!("{c:#x} is no SUBACK reason code"))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let mut ack = v5::Suback::new(pid(s.pid)?, codes);
            ack.properties.reason_string = arc(&s.reason_string);
            v5::Packet::Suback(ack)
        }
        Packet::Unsuback(s) => {
            let codes = s
                .codes
                .iter()
                .map(|&c| {
                    v5::UnsubscribeReasonCode::from_u8(c)
                        .ok_or_else(|| format!("{c:#x} is no UNSUBACK reason code"))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let mut ack = v5::Unsuback::new(pid(s.pid)?, codes);
            ack.properties.reason_string = arc(&s.reason_string);
            v5::Packet::Unsuback(ack)
        }
        Packet::Pingreq => v5::Packet::Pingreq,
        Packet::Pingresp => v5::Packet::Pingresp,
        Packet::Disconnect(d) => {
            let code = v5::DisconnectReasonCode::from_u8(d.code)
                .ok_or_else(|| format!("{:#x} is no DISCONNECT reason code", d.code))?;
            let mut disconnect = v5::Disconnect::new(code);
            disconnect.properties.session_expiry_interval = d.session_expiry;
            disconnect.properties.reason_string = arc(&d.reason_string);
            v5::Packet::Disconnect(disconnect)
        }
        Packet::Auth(code) => {
            let code = v5::AuthReasonCode::from_u8(*code)
                .ok_or_else(|| format!("{code:#x} is no AUTH reason code"))?;
            v5::Packet::Auth(v5::Auth::new(code))
        }
        Packet::Connect(c) => {
            let mut connect = v5::Connect::new(
                std::sync::Arc::<str>::from(c.client_id.as_str()),
                c.keep_alive,
            );
            connect.clean_start = c.clean_start;
            connect.properties.session_expiry_interval = c.session_expiry;
            connect.properties.receive_max = c.receive_maximum;
            connect.properties.max_packet_size = c.maximum_packet_size;
            connect.username = c.username.as_deref().map(std::sync::Arc::<str>::from);
            connect.password = c.password.clone();
            v5::Packet::Connect(connect)
        }
        Packet::Subscribe(s) => {
            let topics = s
                .filters
                .iter()
                .map(|(f, o)| {
                    let mut opts = v5::SubscriptionOptions::new(qos(o.qos)?);
                    opts.no_local = o.no_local;
                    opts.retain_as_published = o.retain_as_published;
                    Ok((
                        mqtt_proto::TopicFilter::try_from(f.as_str()).map_err(|e| e.to_string())?,
                        opts,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            v5::Packet::Subscribe(v5::Subscribe::new(pid(s.pid)?, topics))
        }
        Packet::Unsubscribe(u) => v5::Packet::Unsubscribe(v5::Unsubscribe::new(
            pid(u.pid)?,
            u.filters
                .iter()
                .map(|f| mqtt_proto::TopicFilter::try_from(f.as_str()).map_err(|e| e.to_string()))
                .collect::<Result<_, String>>()?,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mosquitto_pub's CONNECT (MQTT 3.1.1, clean session, keep-alive 60, client id "p").
    const CONNECT_V311: &[u8] = &[
        0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, b'p',
    ];

    #[test]
    fn a_311_session_decodes_packet_by_packet() {
        let mut d = Decoder::new(1 << 20);
        let (p, n) = d.decode(CONNECT_V311).unwrap().unwrap();
        assert_eq!(n, CONNECT_V311.len());
        assert!(
            matches!(p, Packet::Connect(c) if c.client_id == "p" && c.version == Version::V311)
        );
        for (bytes, want) in [
            (&[0x40u8, 0x02, 0x00, 0x07][..], "Puback"),
            (&[0x62, 0x02, 0x00, 0x07][..], "Pubrel"),
            (&[0xc0, 0x00][..], "Pingreq"),
            (&[0xe0, 0x00][..], "Disconnect"),
            (
                &[0x32, 0x08, 0x00, 0x01, b't', 0x00, 0x05, b'a', b'b', b'c'][..],
                "Publish",
            ),
            (
                &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x01][..],
                "Subscribe",
            ),
        ] {
            for cut in 0..bytes.len() {
                assert_eq!(
                    d.decode(&bytes[..cut]).unwrap(),
                    None,
                    "{want} cut at {cut}"
                );
            }
            let (p, n) = d
                .decode(bytes)
                .unwrap_or_else(|e| panic!("{want}: {e}"))
                .unwrap();
            assert_eq!(n, bytes.len());
            assert!(format!("{p:?}").starts_with(want), "{p:?}");
        }
    }

    #[test]
    fn bad_starts_and_sizes_are_refused() {
        let mut d = Decoder::new(64);
        assert!(matches!(
            d.decode(&[0xc0, 0x00]),
            Err(DecodeError::Protocol(_))
        ));
        let mut big = vec![0x10, 0xff, 0x7f];
        big.extend_from_slice(&[0; 8]);
        assert!(matches!(d.decode(&big), Err(DecodeError::TooLarge { .. })));
        assert!(matches!(
            d.decode(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError::Malformed(_))
        ));
        let mut level6 = CONNECT_V311.to_vec();
        level6[8] = 6;
        assert_eq!(d.decode(&level6), Err(DecodeError::UnsupportedVersion(6)));
        let mut d = Decoder::new(1 << 20);
        d.decode(CONNECT_V311).unwrap().unwrap();
        assert!(matches!(
            d.decode(CONNECT_V311),
            Err(DecodeError::Protocol(_))
        ));
    }

    #[test]
    fn what_the_server_sends_round_trips_in_both_versions() {
        for version in [Version::V311, Version::V5] {
            let publish = Packet::Publish(Publish {
                topic: "a/b".into(),
                qos: 1,
                pid: Some(9),
                payload: Bytes::from_static(b"x"),
                ..Publish::default()
            });
            let mut out = Vec::new();
            encode(version, &publish, &mut out).unwrap();
            let mut d = Decoder::new(1 << 20);
            d.version = Some(version);
            let (back, n) = d.decode(&out).unwrap().unwrap();
            assert_eq!(n, out.len());
            assert_eq!(back, publish, "{version:?}");
        }
    }
}
