//! The sans-IO core of the edge/cloud protocol: frames, the session state machine and reconnect
//! backoff. Nothing here touches a socket or a clock; callers pass `now` and bytes in and take
//! frames, events and the next timer out, so every behaviour is testable with a fake clock.

pub mod backoff;
pub mod frame;
pub mod session;

pub use frame::{CloseCode, Frame, FrameError};
pub use session::{Event, Role, Session};

/// Protocol version carried in HELLO and WELCOME.
pub const VERSION: u8 = 2;
/// QUIC ALPN protocol id.
pub const ALPN: &[u8] = b"hub/1";
/// WebSocket subprotocol name.
pub const WS_SUBPROTOCOL: &str = "hub.v1";
/// The largest frame either side accepts; a peer announcing more is refused before anything is
/// allocated for it.
pub const MAX_FRAME: usize = 16 << 20;
