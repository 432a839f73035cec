//! `Frame::decode` on arbitrary bytes: it returns a frame or an error, and a frame it returns
//! encodes to bytes that decode to the same frame. `Frame::decode_owned` reads the same; a
//! message's payload read in place (`MessageView`) is the message `Message::decode_with_prefix`
//! reads, with the same JSON, or both refuse it.
#![no_main]

use hub::message::{Message, MessageView};
use hub::proto::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = Frame::decode(data);
    assert_eq!(Frame::decode_owned(data.to_vec()), decoded);
    let Ok(frame) = decoded else {
        return;
    };
    if let Frame::Message { payload, .. } = &frame {
        let prefix = "node/gw-1/";
        match (
            MessageView::decode(payload, prefix),
            Message::decode_with_prefix(payload, prefix),
        ) {
            (Ok(view), Ok(msg)) => {
                assert_eq!(view.to_owned(), msg);
                assert_eq!(view.to_json(), msg.to_json());
            }
            (Err(_), Err(_)) => {}
            (view, msg) => panic!("in place {view:?}, decoded {msg:?}"),
        }
    }
    // Decoding ignores trailing bytes, so the bytes need not be the same; the frame must.
    let bytes = frame.encode();
    assert_eq!(
        Frame::decode(&bytes),
        Ok(frame.clone()),
        "re-decoding {bytes:02x?}"
    );
    assert_eq!(Frame::decode(&bytes).map(|f| f.encode()), Ok(bytes));
});
