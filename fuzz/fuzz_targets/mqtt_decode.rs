//! The MQTT decoder (`hub::mqtt::codec`) fed arbitrary bytes as a client's stream: it never
//! panics; it takes a packet only once it is whole, and exactly the size `needed` announced,
//! never over the limit; a shorter buffer gives nothing or the same kind of error as the whole;
//! and every packet it yields, encoded again in the version the CONNECT chose and decoded by a
//! second decoder, is the same packet.
#![no_main]

use std::mem::discriminant;

use hub::mqtt::codec::{DecodeError, Decoder, Packet, encode};
use libfuzzer_sys::fuzz_target;

type Decoded = Result<Option<(Packet, usize)>, DecodeError>;

/// `prefix`'s result (of a buffer cut short) fits `whole`'s: nothing yet, the same error kind,
/// or the same packet once the cut is past its end.
fn fits(prefix: &Decoded, whole: &Decoded) -> bool {
    match (prefix, whole) {
        (Ok(None), _) => true,
        (Err(p), Err(w)) => discriminant(p) == discriminant(w),
        (p, w) => p == w,
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the packet size limit: small ones make TooLarge reachable.
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let max = if pick & 0x80 != 0 {
        2 + usize::from(pick & 0x7f) * 4
    } else {
        1 << 20
    };
    let mut decoder = Decoder::new(max);
    // Decodes the re-encoded packets, without a limit: what is compared is their content.
    let mut again = Decoder::new(usize::MAX);
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        let needed = decoder.needed(rest);
        let whole = decoder.clone().decode(rest);
        for cut in (0..rest.len()).take(64) {
            let prefix = decoder.clone().decode(&rest[..cut]);
            assert!(
                fits(&prefix, &whole),
                "cut at {cut}: {prefix:?}, whole: {whole:?}"
            );
        }
        assert_eq!(decoder.decode(rest), whole);
        match whole {
            Ok(Some((packet, n))) => {
                assert!((2..=rest.len()).contains(&n) && n <= max, "took {n} bytes");
                assert_eq!(needed, Some(n));
                at += n;
                let version = decoder.version().expect("a packet before the CONNECT");
                let mut out = Vec::new();
                if let Err(e) = encode(version, &packet, &mut out) {
                    panic!("{packet:?} decoded but does not encode: {e}");
                }
                for cut in (0..out.len()).take(64) {
                    assert_eq!(
                        again.clone().decode(&out[..cut]),
                        Ok(None),
                        "re-encoded, cut at {cut}"
                    );
                }
                assert_eq!(
                    again.decode(&out),
                    Ok(Some((packet, out.len()))),
                    "re-encoded as {out:02x?}"
                );
                assert_eq!(again.version(), Some(version));
            }
            Ok(None) => {
                if let Some(n) = needed {
                    assert!(n > rest.len() && n <= max, "needed {n} of {}", rest.len());
                }
                return;
            }
            Err(DecodeError::TooLarge { size, max: limit }) => {
                assert!(size > max && limit == max);
                assert_eq!(needed, None);
                return;
            }
            Err(_) => return,
        }
    }
});
