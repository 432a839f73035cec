//! Many simulated nodes against one cloud: each connects with its own certificate (WebSocket and
//! QUIC alternately), says HELLO, and then keeps its link alive with heartbeats, through the same
//! session and transport code as `hub edge`.

use argh::FromArgs;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hub::config::Endpoint;
use hub::proto::frame::{Hello, HelloLane, encode_len_prefixed};
use hub::proto::{ALPN, Event, Session, VERSION};
use hub::tls::{self, Credentials};
use hub::transport::{Inbound, Wake, quic, ws};
use smol::future::FutureExt;

#[derive(FromArgs)]
#[argh(subcommand, name = "scale")]
/// Connect many simulated nodes (half WebSocket, half QUIC) to one cloud and keep them idle.
pub struct Scale {
    /// the cloud's WebSocket listener (HOST:PORT)
    #[argh(option)]
    pub websocket: String,
    /// the cloud's QUIC endpoint (IP:PORT)
    #[argh(option)]
    pub quic: String,
    /// folder with ca.crt and node-PREFIXi.crt/.key for every node
    #[argh(option)]
    pub pki: std::path::PathBuf,
    /// node id prefix (default sim-)
    #[argh(option, default = "String::from(\"sim-\")")]
    pub prefix: String,
    /// nodes (default 10000)
    #[argh(option, default = "10_000")]
    pub nodes: usize,
    /// handshakes in progress at once (default 64)
    #[argh(option, default = "64")]
    pub parallel: usize,
    /// seconds to hold the nodes idle after connecting (default 20)
    #[argh(option, default = "20.0")]
    pub hold: f64,
    /// only this protocol (websocket or quic) instead of half each
    #[argh(option)]
    pub only: Option<String>,
    /// hold the nodes until standard input ends, instead of for --hold seconds (to count the
    /// links lost while something happens to the cloud, such as a credentials reload)
    #[argh(switch)]
    pub until_stdin_ends: bool,
}

/// Connects the nodes named `{prefix}{i}` (certificates `node-{prefix}{i}.crt/.key` in the PKI
/// folder), at most `parallel` handshakes at a time, holds them for `hold` seconds (or until
/// standard input ends), and reports how many are still connected and how many links were lost.
pub async fn run(s: Scale) -> Result<(), String> {
    let (ws_addr, quic_addr, pki, prefix, count) =
        (&s.websocket, &s.quic, &s.pki, &s.prefix, s.nodes);
    let parallel = s.parallel.max(1);
    let hold = Duration::from_secs_f64(s.hold.max(0.0));
    let only = s.only.as_deref();
    let ws_ep = Endpoint::parse(ws_addr, None)?;
    let quic_ep: std::net::SocketAddr =
        quic_addr.parse().map_err(|e| format!("{quic_addr}: {e}"))?;
    let endpoint = quic::client_endpoint(false)?;
    let connected = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(smol::lock::Semaphore::new(parallel));
    let started = Instant::now();
    let ca = pki.join("ca.crt");
    let only_websocket = only.map(|p| p == "websocket");
    for i in 0..count {
        let node = format!("{prefix}{i}");
        let creds = Credentials::load(
            &pki.join(format!("node-{node}.crt")),
            &pki.join(format!("node-{node}.key")),
        )
        .map_err(|e| e.to_string())?;
        let permit = slots.acquire_arc().await;
        let (ca, ws_ep, endpoint) = (ca.clone(), ws_ep.clone(), endpoint.clone());
        let (connected, alive, failed) = (connected.clone(), alive.clone(), failed.clone());
        smol::spawn(async move {
            let hello = Hello {
                version: VERSION,
                project_id: "scale".into(),
                node_id: node.clone(),
                heartbeat: Duration::from_secs(15),
                read_deadline: Duration::from_secs(15),
                window: 16,
                lanes: [0, 1].map(|lane| HelloLane {
                    up_stream: 0x5ca1e000 + 2 * i as u64 + lane,
                    up_first: 1,
                    down_stream: 0,
                    down_seq: 0,
                }),
            };
            let mut session = Session::edge(Instant::now(), hello);
            let websocket = match only_websocket {
                Some(w) => w,
                None => i % 2 == 0,
            };
            let link = if websocket {
                let config = match tls::client_config(&ca, &creds, b"http/1.1", false) {
                    Ok(c) => Arc::new(c),
                    Err(_) => return,
                };
                match ws::connect(
                    &ws_ep,
                    &format!("/scale/{node}/events"),
                    config,
                    Duration::from_secs(30),
                )
                .await
                {
                    Ok((stream, peer)) => {
                        session.connected(Instant::now());
                        let link = ws::spawn_link(stream, peer, Duration::from_secs(15));
                        link.flush(&mut session, Instant::now());
                        link
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            } else {
                let config = tls::client_config(&ca, &creds, ALPN, true)
                    .map_err(|e| e.to_string())
                    .and_then(|t| quic::client_config(t, Duration::from_secs(30)));
                let Ok(config) = config else { return };
                let mut first = Vec::new();
                while let Some(f) = session.poll_transmit(Instant::now()) {
                    encode_len_prefixed(&f, &mut first);
                }
                match quic::connect(&endpoint, config, quic_ep, "127.0.0.1", &first).await {
                    Ok((conn, send, recv, _)) => {
                        session.connected(Instant::now());
                        let bulk = quic::BulkStream::Open;
                        quic::spawn_link(conn, send, recv, Duration::from_secs(15), bulk)
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            };
            let mut permit = Some(permit);
            loop {
                while let Some(ev) = session.poll_event() {
                    match ev {
                        Event::Open => {
                            connected.fetch_add(1, Ordering::Relaxed);
                            alive.fetch_add(1, Ordering::Relaxed);
                            permit.take();
                        }
                        Event::Close(..) => {
                            if permit.is_none() {
                                alive.fetch_sub(1, Ordering::Relaxed);
                            } else {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            return;
                        }
                        _ => {}
                    }
                }
                link.flush(&mut session, Instant::now());
                match link.wait(&session, std::future::pending()).await {
                    Wake::Inbound(Inbound::Frame(b)) => session.handle_bytes(Instant::now(), &b),
                    Wake::Inbound(Inbound::Closed(_)) => {
                        if permit.is_none() {
                            alive.fetch_sub(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                    Wake::Timer => session.handle_timeout(Instant::now()),
                    _ => {}
                }
            }
        })
        .detach();
    }
    // Wait for the last handshakes.
    let done = async {
        while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < count {
            smol::Timer::after(Duration::from_millis(50)).await;
        }
    };
    done.or(async {
        smol::Timer::after(Duration::from_secs(120)).await;
    })
    .await;
    let took = started.elapsed();
    let n = connected.load(Ordering::Relaxed);
    println!(
        "connected {n} of {count} nodes ({}) in {:.1}s: {:.0} nodes/s; {} failed",
        only.unwrap_or("half WebSocket, half QUIC"),
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        failed.load(Ordering::Relaxed)
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let held = Instant::now();
    if s.until_stdin_ends {
        let mut stdin = smol::Unblock::new(std::io::stdin());
        let _ = smol::io::copy(&mut stdin, &mut smol::io::sink()).await;
    } else {
        smol::Timer::after(hold).await;
    }
    let still = alive.load(Ordering::Relaxed);
    println!(
        "after {:.0}s idle: {still} still connected, {} lost",
        held.elapsed().as_secs_f64(),
        connected.load(Ordering::Relaxed) - still
    );
    Ok(())
}
