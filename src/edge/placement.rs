//! Placement: before connecting, ask `placement-url` where the cloud is.
//!
//! The request is `GET <path>` over HTTPS (HTTP/1.1, `Connection: close`), verified against the
//! same CA as the cloud and presenting the node certificate, so the placement service knows which
//! node asks. A `200` response's body (at most 64 KiB) is one line naming the endpoint for the
//! configured protocol: `HOST:PORT`, or a URL `wss://HOST[:PORT]/...` / `quic://HOST:PORT` of
//! which host and port are taken. Anything else is an error, and the edge falls back to the
//! configured URL.
//!
//! Every address of the service's host is tried the happy-eyeballs way
//! ([`crate::transport::dial::race`]), an attempt being the TCP connect, the TLS handshake and the
//! whole HTTP exchange: an address that accepts TCP and then stalls or hangs up does not keep
//! the others from being asked. An HTTP response, whatever it says, or a TLS alert about the
//! node certificate is the service's own answer and ends the race.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::TlsConnector;
use rustls::pki_types::ServerName;
use smol::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Endpoint, Url};
use crate::tls::{self, Credentials};
use crate::transport::ws::{server_name, tcp_connect};
use crate::transport::{LinkError, dial, io_link_error};

/// The largest placement response read.
const MAX_RESPONSE: usize = 64 * 1024;

/// The rustls configuration for placement requests (TLS 1.2 or 1.3: a plain HTTPS service).
fn tls_config(ca: &std::path::Path, creds: &Credentials) -> Result<rustls::ClientConfig, String> {
    let roots = tls::load_roots(ca).map_err(|e| e.to_string())?;
    let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Asks the placement service at `url` for the cloud endpoint, within `limit`
/// (handshake-timeout). Every address the service's host resolves to is tried, the one in
/// `last_good` first (and the one that answers is remembered there); the error names each
/// address tried and why it failed. Attempts go at `pacer`'s pace (the edge's own, so that a
/// long outage slows them as it slows the link's, and `controller.fast-attempts-for` applies).
pub async fn query(
    url: &Url,
    ca: &std::path::Path,
    creds: &Credentials,
    limit: Duration,
    last_good: &mut dial::LastGood,
    pacer: &mut dial::Pacer,
) -> Result<Endpoint, String> {
    let limit = dial::Limit::new(limit);
    let connector = TlsConnector::from(Arc::new(tls_config(ca, creds)?));
    let name = server_name(&url.endpoint.host)?;
    let addrs = dial::resolve(&url.endpoint.host, url.endpoint.port, limit).await?;
    let addrs = last_good.order(&url.endpoint, addrs);
    let raced = dial::race(&addrs, pacer, limit, LinkError::verdict, |addr| {
        ask(url, connector.clone(), name.clone(), addr)
    })
    .await;
    match raced {
        Ok((endpoint, addr)) => {
            last_good.remember(&url.endpoint, addr);
            Ok(endpoint)
        }
        Err(failed) => Err(failed.to_string()),
    }
}

/// The request and its answer from `addr`. A response that is not a usable 200 (and a TLS alert
/// about the node certificate) is the service's answer ([`LinkError::is_final`]); a failure before
/// any response is not.
async fn ask(
    url: &Url,
    connector: TlsConnector,
    name: ServerName<'static>,
    addr: SocketAddr,
) -> Result<Endpoint, LinkError> {
    let tcp = tcp_connect(addr).await.map_err(LinkError::Io)?;
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| io_link_error("TLS", &e))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hub/{}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        url.path,
        url.endpoint,
        env!("CARGO_PKG_VERSION")
    );
    let io = |e: std::io::Error| io_link_error("HTTP", &e);
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut response)
        .await
        .or_else(|e| {
            // Servers often close without a TLS close_notify; what arrived still counts.
            if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() {
                Ok(response.len())
            } else {
                Err(io(e))
            }
        })?;
    // Only an HTTP response is the service's answer; other bytes (or none) are a broken exchange.
    let answered = |why: String| {
        if response.starts_with(b"HTTP/") {
            LinkError::Refused(why)
        } else {
            LinkError::Io(why)
        }
    };
    if response.len() > MAX_RESPONSE {
        return Err(answered(format!("response is over {MAX_RESPONSE} bytes")));
    }
    let body = parse_response(&response).map_err(answered)?;
    parse_endpoint(body.trim()).map_err(answered)
}

/// The body of an HTTP/1.1 response whose status is 200.
fn parse_response(response: &[u8]) -> Result<String, String> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("response has no end of headers")?;
    let head =
        std::str::from_utf8(&response[..split]).map_err(|_| "response headers are not text")?;
    let body = &response[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(format!("answered {status:?}"));
    }
    let header = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(body)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| "bad Content-Length")?;
        body.get(..len)
            .ok_or("response shorter than its Content-Length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|_| "response body is not text".into())
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).ok_or("truncated chunk")?);
        body = body.get(size + 2..).ok_or("truncated chunk")?;
    }
}

/// `HOST:PORT`, `wss://HOST[:PORT]/...` or `quic://HOST:PORT`.
fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let line = text.lines().next().unwrap_or_default().trim();
    if line.starts_with("wss://") {
        return Url::parse(line, "wss").map(|u| u.endpoint);
    }
    let bare = line.strip_prefix("quic://").unwrap_or(line);
    let bare = bare.split('/').next().unwrap_or_default();
    Endpoint::parse(bare, None).map_err(|e| format!("placement answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n10.0.0.1:10001\r\nextra";
        assert_eq!(parse_response(ok).unwrap(), "10.0.0.1:10001\r\n");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhost:\r\n3;x=1\r\n443\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), "host:443");
        let until_eof = b"HTTP/1.0 200 OK\r\n\r\nh:1";
        assert_eq!(parse_response(until_eof).unwrap(), "h:1");
        assert!(
            parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n")
                .unwrap_err()
                .contains("404")
        );
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    }

    #[test]
    fn endpoints() {
        let ep = |h: &str, p| Endpoint {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            parse_endpoint("127.0.0.1:10001"),
            Ok(ep("127.0.0.1", 10001))
        );
        assert_eq!(
            parse_endpoint("wss://cloud:10000/p/n/events\n"),
            Ok(ep("cloud", 10000))
        );
        assert_eq!(
            parse_endpoint("wss://cloud/p/n/events"),
            Ok(ep("cloud", 443))
        );
        assert_eq!(parse_endpoint("quic://[::1]:7"), Ok(ep("::1", 7)));
        assert!(parse_endpoint("").is_err());
        assert!(parse_endpoint("cloud").is_err());
    }
}
