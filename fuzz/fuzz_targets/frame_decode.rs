//! `Frame::decode` on arbitrary bytes: it returns a frame or an error, and a frame it returns
//! encodes to bytes that decode to the same frame.
#![no_main]

use hub::proto::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(data) else {
        return;
    };
    // Decoding ignores trailing bytes, so the bytes need not be the same; the frame must.
    let bytes = frame.encode();
    assert_eq!(
        Frame::decode(&bytes),
        Ok(frame.clone()),
        "re-decoding {bytes:02x?}"
    );
    assert_eq!(Frame::decode(&bytes).map(|f| f.encode()), Ok(bytes));
});
