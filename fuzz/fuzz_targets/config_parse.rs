//! The cloud and edge configuration parsers on arbitrary text: an error or a configuration, never
//! a panic.
#![no_main]

use std::path::Path;

use hub::config::{CloudConfig, EdgeConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.yaml");
    let _ = CloudConfig::from_yaml(file, text);
    let _ = EdgeConfig::from_yaml(file, text, Path::new("/nonexistent/ca.crt"));
});
