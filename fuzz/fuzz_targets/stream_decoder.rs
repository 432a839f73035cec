//! `StreamDecoder` fed the same bytes in one piece and cut at arbitrary points: it yields the
//! same frames, then the same error (or none), whatever the cuts.
#![no_main]

use hub::proto::FrameError;
use hub::proto::frame::StreamDecoder;
use libfuzzer_sys::fuzz_target;

/// Feeds `pieces` one after another, taking every frame as soon as it is whole, and stops at the
/// first error, as the QUIC transport does.
fn decode<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut d = StreamDecoder::default();
    let mut frames = Vec::new();
    for piece in pieces {
        d.push(piece);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
        assert!(d.wanted() >= 1);
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    // The first byte says how many cut points follow (two bytes each); the rest is the stream.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len() / 2);
    let (cuts, stream) = rest.split_at(2 * n);
    let mut at: Vec<usize> = cuts
        .chunks(2)
        .map(|c| usize::from(u16::from_be_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    at.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for &cut in &at {
        pieces.push(&stream[start..cut]);
        start = cut;
    }
    pieces.push(&stream[start..]);

    let whole = decode([stream]);
    let split = decode(pieces);
    assert_eq!(whole, split, "cut at {at:?}");
});
