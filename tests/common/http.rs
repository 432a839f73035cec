//! Reading a hub's operations endpoint (`metrics.listen`) from tests: plain HTTP/1.1 over a
//! std `TcpStream`, and samples picked out of the text exposition.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::Hub;

/// The operations endpoint `hub` logged (`metrics and health listening on http://ADDR`). Waits
/// for the line; resets nothing, so call it before other waits that move the cursor past it, or
/// reset `hub.cursor` first.
pub fn ops_addr(hub: &mut Hub) -> SocketAddr {
    let line = hub.wait_for("metrics and health listening on http://");
    let at = line.find("http://").unwrap() + "http://".len();
    let addr = line[at..].split_whitespace().next().unwrap();
    addr.parse().unwrap()
}

/// `GET path` on `addr`: the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
}

/// Sends `raw` as the whole request and reads the response until the server closes: the status
/// code and the body.
pub fn request(addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the operations endpoint");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The value of the sample `name{labels}` in exposition `text` (labels as written, e.g.
/// `lane="bulk"`; empty for none), if there is one.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.trim().parse().expect("a number"))
}

/// Scrapes `addr` and returns [`sample`] of `name{labels}`, 0 when absent.
pub fn scrape(addr: SocketAddr, name: &str, labels: &str) -> f64 {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    sample(&body, name, labels).unwrap_or(0.0)
}
