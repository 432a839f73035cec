//! The session state machine driven by the fuzzer: an edge and a cloud session joined by a
//! simulated link, each operation (deliver, drop, duplicate, reorder, forge or garble frames,
//! let time pass, submit messages, close, reconnect) chosen by the input. The simulation is the
//! one the property tests use (`tests/properties/sim.rs`) and checks the same invariants after
//! every operation; when no frame was forged it finally reconnects over a faithful link and
//! checks that every message arrived once and in order.
#![no_main]

#[allow(dead_code)]
#[path = "../../tests/properties/sim.rs"]
mod sim;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sim::run_bytes(data));
