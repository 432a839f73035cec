//! The MQTT front-end: an MQTT 3.1.1 / 5.0 listener over the same routing core as the WebSocket
//! application API (see `docs/mqtt.md`).

pub mod codec;
