//! What an application can make its hub hold is bounded in bytes before the bytes are taken:
//! a WebSocket message over the limit is refused with close code 1009 as soon as its frame
//! header (or the fragment that passes the limit) arrives, and a subscriber that stops reading
//! is disconnected (close code 1008) when what waits for it passes its byte bound. Each case
//! runs a real `hub edge` and reads its peak memory (VmHWM) from /proc.
//!
//! The misbehaving applications speak WebSocket by hand over a plain socket, so the test
//! controls frame sizes and fragments and can stop reading at will.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::apps::*;
use common::{CloudSpec, EdgeSpec, Proto};
use hub::client;

const MIB: usize = 1 << 20;

/// The process's peak resident memory so far, in bytes.
fn peak_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A WebSocket client written by hand: client frames are masked with a zero key.
struct RawWs {
    stream: TcpStream,
}

/// One frame from the hub: opcode and payload.
type RawFrame = (u8, Vec<u8>);

const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;

impl RawWs {
    /// Opens `path` at the endpoint `url` (`ws://HOST:PORT`).
    fn connect(url: &str, path: &str) -> RawWs {
        let addr = url.strip_prefix("ws://").unwrap().trim_end_matches('/');
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawWs { stream }
    }

    /// A masked frame header for a payload of `len` bytes (zero mask: the payload goes as is).
    fn header(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut h = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=65535 => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        h.extend_from_slice(&[0, 0, 0, 0]);
        h
    }

    /// Writes a frame of `len` bytes of `x`, in pieces of at most 1 MiB; `Err` once the hub
    /// closed the connection.
    fn write_frame(
        stream: &mut TcpStream,
        fin: bool,
        opcode: u8,
        len: usize,
    ) -> std::io::Result<()> {
        stream.write_all(&Self::header(fin, opcode, len))?;
        let piece = vec![b'x'; len.min(MIB)];
        let mut left = len;
        while left > 0 {
            let n = left.min(piece.len());
            stream.write_all(&piece[..n])?;
            left -= n;
        }
        Ok(())
    }

    fn send_text(&mut self, text: &str) {
        self.stream
            .write_all(&Self::header(true, TEXT, text.len()))
            .unwrap();
        self.stream.write_all(text.as_bytes()).unwrap();
    }

    /// The next frame from the hub (its frames are not masked); `None` at the end of the stream.
    fn read_frame(&mut self) -> Option<RawFrame> {
        let mut h = [0u8; 2];
        match self.stream.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("reading from the hub: {e}"),
        }
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).unwrap();
                usize::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).unwrap();
        Some((h[0] & 0x0f, payload))
    }

    /// Reads until the hub's close frame; returns its code and reason, and how many text frames
    /// came before it.
    fn read_until_close(&mut self) -> (u16, String, usize) {
        let mut texts = 0;
        loop {
            match self.read_frame() {
                Some((CLOSE, payload)) => {
                    assert!(payload.len() >= 2, "a close frame without a code");
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let reason = String::from_utf8(payload[2..].to_vec()).unwrap();
                    return (code, reason, texts);
                }
                Some((TEXT, _)) => texts += 1,
                Some(_) => {}
                None => {
                    panic!("the connection ended without a close frame after {texts} text frame(s)")
                }
            }
        }
    }

    /// Subscribes (the path carries the query) and returns once the hub has the subscription in
    /// place: it answers a non-message with an error notice only after registering it.
    fn subscribe(url: &str, prefix: &str) -> RawWs {
        let mut ws = RawWs::connect(url, &format!("/?resource={prefix}"));
        ws.send_text("not a message");
        let (opcode, notice) = ws.read_frame().expect("the hub's notice");
        assert_eq!(opcode, TEXT);
        let notice = String::from_utf8(notice).unwrap();
        assert!(notice.contains("\"error\""), "{notice}");
        ws
    }
}

/// Sends, from a thread of its own, a text message of `total` bytes in fragments of `fragment`
/// bytes (one frame if `fragment >= total`), while this thread reads what the hub answers;
/// returns the close code and reason.
fn send_oversized(url: &str, total: usize, fragment: usize) -> (u16, String) {
    let mut ws = RawWs::connect(url, "/");
    let mut writer = ws.stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let mut sent = 0;
        while sent < total {
            let len = fragment.min(total - sent);
            let opcode = if sent == 0 { TEXT } else { CONTINUATION };
            if RawWs::write_frame(&mut writer, sent + len == total, opcode, len).is_err() {
                return; // the hub closed the connection: expected
            }
            sent += len;
        }
    });
    let (code, reason, texts) = ws.read_until_close();
    assert_eq!(texts, 0, "nothing but the close frame was expected");
    sending.join().unwrap();
    (code, reason)
}

/// An edge with the default `apps.max-message-bytes` (1 MiB), its link dialling nowhere (its
/// outbox takes what applications publish).
fn lone_edge(dir: &std::path::Path) -> (common::Hub, String) {
    let pki = common::link_pki(dir);
    let spec = EdgeSpec::new(Proto::Websocket, &pki, "edge-node", 9);
    start_edge(&spec, dir)
}

fn publish_one(ws: &mut client::Connection, resource: &str) {
    block("publish", async {
        client::publish(ws, &message(resource, "1")).await.unwrap();
    });
}

#[test]
fn an_oversized_message_is_refused_with_1009_and_others_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut edge, url) = lone_edge(tmp.path());
    let mut other = block("connect", client::connect(&url, "/")).unwrap();
    publish_one(&mut other, "before");
    let before = peak_rss(edge.pid());

    // One 48 MiB message in one frame: refused at its header, with a reason.
    let (code, reason) = send_oversized(&url, 48 * MIB, usize::MAX);
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("message too big"), "{reason}");
    assert!(reason.contains(&(MIB + 64 * 1024).to_string()), "{reason}");
    let line = edge.wait_for("closing its connection (1009)");
    assert!(line.contains("apps.max-message-bytes"), "{line}");

    // The connection open meanwhile and a new one are served as before.
    publish_one(&mut other, "after");
    let mut fresh = block("connect", client::connect(&url, "/")).unwrap();
    publish_one(&mut fresh, "after");
    let grown = peak_rss(edge.pid()).saturating_sub(before);
    println!("peak RSS grew by {grown} bytes");
    assert!(grown < 16 * MIB, "the hub grew by {grown} bytes");
}

#[test]
fn a_fragmented_oversized_message_is_refused_before_it_is_buffered() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut edge, url) = lone_edge(tmp.path());
    let mut other = block("connect", client::connect(&url, "/")).unwrap();
    publish_one(&mut other, "before");
    let before = peak_rss(edge.pid());

    // 60 MiB in 4 MiB fragments: the first fragment is over the limit by itself.
    let (code, reason) = send_oversized(&url, 60 * MIB, 4 * MIB);
    assert_eq!(
        (code, reason.contains("message too big")),
        (1009, true),
        "{reason}"
    );
    edge.wait_for("closing its connection (1009)");
    // 60 MiB in 64 KiB fragments: refused at the fragment that passes the limit.
    let (code, reason) = send_oversized(&url, 60 * MIB, 64 * 1024);
    assert_eq!(
        (code, reason.contains("message too big")),
        (1009, true),
        "{reason}"
    );
    edge.wait_for("closing its connection (1009)");

    publish_one(&mut other, "after");
    let grown = peak_rss(edge.pid()).saturating_sub(before);
    println!("peak RSS grew by {grown} bytes");
    assert!(
        grown < 16 * MIB,
        "the hub grew by {grown} bytes for 2 x 60 MiB it should have refused early"
    );
}

#[test]
fn a_subscriber_that_stops_reading_is_disconnected_at_its_byte_bound() {
    const COUNT: usize = 240;
    const SIZE: usize = 512 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    // The node's queue on the cloud takes all 120 MiB, however fast the edge drains it.
    let spec = CloudSpec {
        queues_extra: "  max-bytes: 1073741824\n  fsync: never\n".into(),
        ..CloudSpec::default()
    };
    let cloud = common::start_cloud(tmp.path(), &pki, &spec);
    let (mut edge, url) = start_connected_edge(tmp.path(), &pki, Proto::Websocket, &cloud);

    // One subscriber stops reading once subscribed; another keeps reading.
    let mut stalled = RawWs::subscribe(&url, "big");
    let mut reader = subscribe(&url, "big");
    let before = peak_rss(edge.pid());
    let reading = std::thread::spawn(move || receive(&mut reader, COUNT).len());

    let content = format!("\"{}\"", "x".repeat(SIZE));
    let msgs: Vec<_> = (0..COUNT)
        .map(|_| message("node/edge-node/big", &content))
        .collect();
    let outcomes = block("publish", async {
        let ws = client::connect(&cloud.apps, "/").await.unwrap();
        publish_tracked(ws, &msgs, |_| {}).await
    });
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");

    // The reading subscriber gets everything: the stalled one does not hold the link back.
    assert_eq!(reading.join().unwrap(), COUNT);
    let line = edge.wait_for("is too slow");
    assert!(line.contains("-byte bound"), "{line}");
    let grown = peak_rss(edge.pid()).saturating_sub(before);

    // What was written before the cut arrives, then the close frame with the reason.
    let (code, reason, texts) = stalled.read_until_close();
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("too slow"), "{reason}");
    assert!(
        texts < COUNT,
        "{texts} messages reached the stalled subscriber"
    );
    println!(
        "stalled subscriber: {texts} messages, then {code} {reason:?}; peak RSS grew by {grown} bytes"
    );
    // 240 x 512 KiB would be 120 MiB held for it; its bound is 16 MiB.
    assert!(grown < 48 * MIB, "the edge grew by {grown} bytes");
}
