//! `MessageRef::from_json` on arbitrary text: the one-pass reading takes a text only as
//! serde_json's reading does (the same fields, or the same error), and a message decoded from
//! the binary form it encodes to is the same message.
#![no_main]

use hub::message::{Message, MessageRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let read = MessageRef::from_json(text);
    assert_eq!(read, MessageRef::from_json_serde(text), "{text:?}");
    let Ok(msg) = read else { return };
    if let Ok(bytes) = msg.encode_as(&msg.resource) {
        assert_eq!(Message::decode(&bytes), Ok(msg.into_owned()));
    }
});
