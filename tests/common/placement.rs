//! A placement service for the tests (docs/protocol.md §7).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A small HTTPS server standing in for the placement service: it requires a client certificate
/// from the dev CA, records the client's identity, and answers every request with `answer`.
pub struct Placement {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Each request: the client certificate's identity and the request line.
    pub clients: Arc<Mutex<Vec<String>>>,
}

impl Placement {
    pub fn start(pki: &Path, answer: String) -> Placement {
        let roots = Arc::new(hub::tls::load_roots(&pki.join("ca.crt")).unwrap());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots,
            hub::tls::provider(),
        )
        .build()
        .unwrap();
        let creds =
            hub::tls::Credentials::load(&pki.join("server.crt"), &pki.join("server.key")).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(hub::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(creds.chain, creds.key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let clients: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = clients.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut tcp) = stream else { continue };
                let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let who = tls
                    .conn
                    .peer_certificates()
                    .and_then(|c| hub::tls::CertIdentity::from_der(&c[0]))
                    .map(|i| i.describe())
                    .unwrap_or_default();
                let line = String::from_utf8_lossy(&request)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(format!("{who} {line}"));
                let body = format!("{answer}\n");
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        Placement { port, clients }
    }
}
