//! `hub`: a cloud/edge messaging hub.
//!
//! `hub cloud` (CloudHub) accepts edge nodes over WebSocket and QUIC at the same time with mutual
//! TLS; `hub edge` (EdgeHub) connects one gateway to it and carries messages both ways. This crate
//! holds everything the `hub` binary is made of; `main.rs` only dispatches.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apps;
pub mod cli;
pub mod client;
pub mod cloud;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod console;
pub mod edge;
pub mod exchange;
pub mod http;
pub mod local;
pub mod message;
pub mod metrics;
pub mod mqtt;
pub mod open_files;
pub mod pki;
pub mod proto;
pub mod queue;
pub mod retained;
pub mod sessions;
pub mod shutdown;
pub mod signal;
pub mod store;
pub mod tls;
pub mod transport;
