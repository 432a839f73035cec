//! The edge hub: one link to the cloud over the configured protocol, kept up across bad networks.
//!
//! Each round: ask placement (when configured) for the endpoint, connect within
//! `handshake-timeout` (attempts paced by [`dial::Pacer`] from the last link's round trip), run
//! the session until the link ends, then try again: after an answer (a refusal, a reset, a TLS
//! failure, a close code) once a jittered exponential backoff (reset after a stable link) has
//! passed, after silence (nothing came back) at once, the pacer alone setting the pace. An edge
//! on QUIC with a `websocket` section falls back to WebSocket when QUIC gets no answer, and
//! probes QUIC in the background to go back to it. Every reconnect is logged with its cause.

mod credentials;
mod ops;
mod placement;
mod status;

pub use credentials::{CredentialStore, ROTATED_CERT, ROTATED_KEY};
pub use status::{LinkState, Status};

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::future::FutureExt;

use crate::apps::{Apps, Route};
use crate::config::{EdgeConfig, Endpoint, Fallback, Protocol};
use crate::exchange::{Exchange, LaneStores};
use crate::metrics::{Cause, METRICS};
use crate::proto::backoff::Backoff;
use crate::proto::frame::{Hello, HelloLane, encode_len_prefixed};
use crate::proto::{ALPN, CloseCode, Event, Session, VERSION};
use crate::shutdown::Shutdown;
use crate::tls;
use crate::transport::{Inbound, Link, LinkError, Wake, close_cause, dial, quic, timeout, ws};

/// How long a closing link may take to tell the cloud why.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// How one link ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The link was lost or closed after an answer (a close code, a reset); reconnect after the
    /// backoff.
    Lost,
    /// The link was lost to silence (nothing arrived within the read deadline); reconnect at
    /// once.
    Silent,
    /// A QUIC probe succeeded while on the WebSocket fallback: the link was closed (code 1) to
    /// reconnect over QUIC at once.
    BackToQuic,
    /// The cloud refused the node certificate before the link opened (the reason); reconnect,
    /// with the last credentials that worked if these are others.
    CertificateRefused(String),
}

/// TLS state kept across reconnects, rebuilt when the credentials rotate.
struct Tls {
    generation: u64,
    websocket: Arc<rustls::ClientConfig>,
    quic: quinn::ClientConfig,
}

/// Runs the edge hub until `shutdown`.
pub async fn run(config: EdgeConfig, shutdown: Shutdown) -> Result<(), String> {
    let creds = CredentialStore::load(&config)?;
    if let Some(r) = &config.refresh {
        creds.spawn_refresh(r.interval, shutdown.clone());
    }
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64 ^ nanos_now();
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max, seed);
    // The pace of connection attempts, from the last link's round trip.
    let mut pacer = dial::Pacer::new(dial::ATTEMPT_DELAY, seed.rotate_left(17))
        .with_fast_for(config.fast_attempts_for);
    // On the WebSocket fallback of a QUIC edge.
    let mut on_fallback = false;
    let mut tls: Option<Tls> = None;
    let mut quic_endpoints = quic::ClientEndpoints::default();
    // The address that answered last, per endpoint (placement's and the cloud's), tried first.
    let mut last_good = dial::LastGood::default();

    let dir = &config.outbox.dir;
    let _lock = crate::queue::lock_dir(dir)?;
    let outbox =
        Arc::new(LaneStores::open(dir, &config.outbox).map_err(|e| format!("the outbox: {e}"))?);
    let (local, sessions) = crate::mqtt::open_core(
        dir,
        config.apps.request_timeout,
        &config.mqtt,
        &config.outbox,
    )?;
    let status = Status::new(&config.node_id, &config.project_id, config.protocol);
    let (shown, shown_outbox) = (status.clone(), outbox.clone());
    let apps = Arc::new(Apps {
        local: local.clone(),
        route: Route::Edge(outbox.clone()),
        max_message_bytes: config.apps.max_message_bytes,
        nodes: None,
        status: Some(Box::new(move || shown.json(&shown_outbox))),
        sessions: sessions.clone(),
    });
    crate::apps::start(&config.apps, apps.clone(), shutdown.clone())?;
    crate::mqtt::start(&config.mqtt, apps, sessions, shutdown.clone())?;
    let ops = ops::ops(
        outbox.clone(),
        config.outbox.clone(),
        creds.clone(),
        shutdown.clone(),
    );
    crate::http::start(config.metrics.listen, Arc::new(ops), shutdown.clone())?;
    // Ready for systemd once applications can hand messages over, link or no link.
    crate::http::notify_ready();
    if !outbox.is_empty() {
        log::info!("{} message(s) waiting in the outbox", outbox.len());
    }
    log::info!(
        "edge {} (project {}) starting: {} to {}",
        config.node_id,
        config.project_id,
        config.protocol,
        config.endpoint
    );

    while !shutdown.is_triggered() {
        let (generation, current) = creds.current();
        if tls.as_ref().is_none_or(|t| t.generation != generation) {
            tls = Some(build_tls(&config, &current, generation)?);
        }
        let tls = tls.as_ref().expect("built above");

        let protocol = if on_fallback {
            Protocol::Websocket
        } else {
            config.protocol
        };
        let target = match (&config.placement, &config.fallback) {
            (_, Some(f)) if on_fallback => f.endpoint.clone(),
            (None, _) => config.endpoint.clone(),
            (Some(url), _) => {
                let asked = placement::query(
                    url,
                    &config.ca,
                    &current,
                    config.handshake_timeout,
                    &mut last_good,
                    &mut pacer,
                )
                .await;
                match asked {
                    Ok(ep) => {
                        log::info!(
                            "placement at https://{}{} says the cloud is at {ep}",
                            url.endpoint,
                            url.path
                        );
                        ep
                    }
                    Err(e) => {
                        log::warn!(
                            "placement at https://{}{} failed: {e}; using {}",
                            url.endpoint,
                            url.path,
                            config.endpoint
                        );
                        config.endpoint.clone()
                    }
                }
            }
        };

        let exchange = Exchange::open(&outbox, local.clone(), None).await;
        let lanes = exchange.streams().map(HelloLane::from);
        let mut session = Session::edge(
            Instant::now(),
            Hello {
                version: VERSION,
                project_id: config.project_id.clone(),
                node_id: config.node_id.clone(),
                heartbeat: config.heartbeat,
                read_deadline: config.read_deadline,
                window: config.outbox.window,
                lanes,
            },
        );
        let started = Instant::now();
        // Each transport bounds its attempts by handshake-timeout itself, so that a failure
        // names every address tried.
        // With a fallback, a dial gives up after that many unanswered attempts, so that an edge
        // whose QUIC gets no answer tries WebSocket soon (and, on the fallback, goes back to
        // QUIC when WebSocket gets none either: the whole path may be down).
        let mut limit = dial::Limit::new(config.handshake_timeout);
        if let Some(f) = &config.fallback {
            limit = limit.with_attempts(f.after as usize);
        }
        let dialer = Dialer {
            quic_endpoints: &mut quic_endpoints,
            last_good: &mut last_good,
            pacer: &mut pacer,
        };
        status.connecting(
            protocol,
            match protocol {
                Protocol::Websocket => format!("wss://{target}{}", config.websocket_path()),
                Protocol::Quic => target.to_string(),
            },
        );
        let attempt = connect(&config, protocol, &target, tls, &mut session, dialer, limit)
            .or(async {
                shutdown.wait().await;
                Err(LinkError::Eof)
            })
            .await;
        let ended = match attempt {
            Ok((link, how, quic_conn)) => {
                // The link's own time counts towards the backoff's reset, not the connect's.
                let up = Instant::now();
                let mut stats = LinkStats {
                    hello_at: Instant::now(),
                    opened: false,
                    rtt: None,
                };
                // On the fallback, QUIC is probed in the background while the link runs.
                let probe: Option<Probe<'_>> = match &config.fallback {
                    Some(f) if on_fallback => Some(Box::pin(probe_quic(
                        &config,
                        f.probe_interval,
                        &tls.quic,
                        &mut quic_endpoints,
                    ))),
                    _ => None,
                };
                let driven = Driven {
                    config: &config,
                    status: &status,
                    creds: &creds,
                    generation,
                    how,
                    started,
                    probe,
                    stats: &mut stats,
                };
                let ended = drive(link, session, exchange, driven, &shutdown).await;
                if let Some(conn) = quic_conn {
                    stats.rtt = Some(conn.rtt());
                }
                if stats.opened {
                    pacer.link_opened(stats.rtt);
                    if let Some(rtt) = stats.rtt {
                        log::debug!(
                            "round trip {:.1} ms: attempts {:.0} ms apart while the cloud is silent",
                            rtt.as_secs_f64() * 1000.0,
                            pacer.base().as_secs_f64() * 1000.0
                        );
                    }
                }
                backoff.link_was_up(up.elapsed());
                ended
            }
            Err(_) if shutdown.is_triggered() => {
                status.ended(None);
                Ended::Shutdown
            }
            Err(e) => {
                log::warn!("cannot connect to the cloud at {target} over {protocol}: {e}");
                let cause = match e {
                    LinkError::CertificateRefused(_) => Cause::CertificateRefused,
                    _ => Cause::ConnectFailed,
                };
                METRICS.reconnect(cause);
                status.ended(Some((cause, &e.to_string())));
                match e {
                    LinkError::CertificateRefused(why) => Ended::CertificateRefused(why),
                    LinkError::NoAnswer(_) => {
                        if let Some(f) = &config.fallback {
                            on_fallback = fall_back(f, on_fallback, &target, &config);
                        }
                        Ended::Silent
                    }
                    _ => Ended::Lost,
                }
            }
        };
        match ended {
            Ended::Shutdown => break,
            Ended::Lost => {}
            // Nothing came back: an attempt should be under way when the path returns, so no
            // backoff; the pacer spaces the attempts.
            Ended::Silent => {
                log::info!(
                    "reconnecting at once: nothing came back, so no backoff (attempts {:.0} ms apart)",
                    pacer.base().as_secs_f64() * 1000.0
                );
                continue;
            }
            Ended::BackToQuic => {
                on_fallback = false;
                continue;
            }
            Ended::CertificateRefused(why) => {
                creds.refused(generation, &why);
            }
        }
        let delay = backoff.next_delay();
        log::info!("reconnecting in {:.1}s", delay.as_secs_f64());
        let _ = timeout(delay, shutdown.wait()).await;
    }
    crate::http::notify_stopping();
    quic_endpoints.close(CLOSE_LINGER).await;
    log::info!("stopped");
    Ok(())
}

fn nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn build_tls(
    config: &EdgeConfig,
    creds: &tls::Credentials,
    generation: u64,
) -> Result<Tls, String> {
    let websocket =
        tls::client_config(&config.ca, creds, b"http/1.1", false).map_err(|e| e.to_string())?;
    let quic_tls = tls::client_config(&config.ca, creds, ALPN, true).map_err(|e| e.to_string())?;
    let quic = quic::client_config_with(quic_tls, config.read_deadline * 2, config.congestion)?;
    Ok(Tls {
        generation,
        websocket: Arc::new(websocket),
        quic,
    })
}

/// Whether the edge is on the WebSocket fallback after a dial over `target` that got no answer,
/// from `on_fallback` (whether it was): a silent QUIC dial falls back (with one warning naming
/// why), a silent WebSocket dial on the fallback goes back to QUIC (the whole path may be down,
/// and QUIC is the configured protocol).
fn fall_back(f: &Fallback, on_fallback: bool, target: &Endpoint, config: &EdgeConfig) -> bool {
    if on_fallback {
        log::info!(
            "WebSocket got no answer either; trying QUIC at {} again",
            config.endpoint
        );
        return false;
    }
    log::warn!(
        "QUIC to {target} got no answer in {} attempt(s) (UDP blocked or filtered?): falling back to WebSocket at wss://{}{}; QUIC is probed again every {:.0}s",
        f.after,
        f.endpoint,
        config.websocket_path(),
        f.probe_interval.as_secs_f64()
    );
    true
}

/// A background QUIC probe: resolves when a QUIC handshake with the cloud succeeded.
type Probe<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Tries a QUIC handshake with the cloud at `config.endpoint` every `interval` until one
/// succeeds (at most `fallback-after` attempts each time, within `handshake-timeout`); the
/// connection is closed at once, its only use being to show that QUIC gets through (and to leave
/// a session ticket for 0-RTT). Failures are logged at debug level.
async fn probe_quic(
    config: &EdgeConfig,
    interval: Duration,
    tls: &quinn::ClientConfig,
    endpoints: &mut quic::ClientEndpoints,
) {
    let after = config.fallback.as_ref().map_or(3, |f| f.after) as usize;
    loop {
        smol::Timer::after(interval).await;
        let limit = dial::Limit::new(config.handshake_timeout).with_attempts(after);
        let target = &config.endpoint;
        let addrs = match dial::resolve(&target.host, target.port, limit).await {
            Ok(a) => a,
            Err(e) => {
                log::debug!("QUIC probe: {e}");
                continue;
            }
        };
        let mut pacer = dial::Pacer::default();
        let probed = quic::dial(endpoints, tls, &addrs, &target.host, &[], limit, &mut pacer).await;
        match probed {
            Ok((conn, ..)) => {
                log::info!(
                    "QUIC answers again at {}: moving the link back from WebSocket to QUIC",
                    conn.remote_address()
                );
                conn.close(0u32.into(), b"QUIC probe");
                return;
            }
            Err(e) => log::debug!("QUIC probe: {e}"),
        }
    }
}

/// What dialling keeps across reconnects: QUIC's endpoints, the address that answered last and
/// the pace of attempts.
struct Dialer<'a> {
    quic_endpoints: &'a mut quic::ClientEndpoints,
    last_good: &'a mut dial::LastGood,
    pacer: &'a mut dial::Pacer,
}

/// Connects `protocol` to every address of `target`, the happy-eyeballs way (the one that
/// answered last first) with fresh attempts beside silent ones, within `limit`
/// (`handshake-timeout`, and at most so many attempts), and hands the session's HELLO to it (as
/// 0-RTT data on QUIC when the session can be resumed). Returns the link, how the handshake
/// went, for the log, and the QUIC connection (for its round trip).
async fn connect(
    config: &EdgeConfig,
    protocol: Protocol,
    target: &Endpoint,
    tls: &Tls,
    session: &mut Session,
    dialer: Dialer<'_>,
    limit: dial::Limit,
) -> Result<(Link, &'static str, Option<quinn::Connection>), LinkError> {
    match protocol {
        Protocol::Websocket => {
            let (stream, peer) = ws::dial(
                target,
                &config.websocket_path(),
                tls.websocket.clone(),
                limit,
                dialer.pacer,
                dialer.last_good,
            )
            .await?;
            session.connected(Instant::now());
            let link = ws::spawn_link(stream, peer, config.write_deadline);
            link.flush(session, Instant::now());
            Ok((link, "TLS 1.3", None))
        }
        Protocol::Quic => {
            let addrs = dial::resolve(&target.host, target.port, limit)
                .await
                .map_err(LinkError::Io)?;
            let addrs = dialer.last_good.order(target, addrs);
            let mut first = Vec::new();
            while let Some(frame) = session.poll_transmit(Instant::now()) {
                encode_len_prefixed(&frame, &mut first);
            }
            let (conn, send, recv, how) = quic::dial(
                dialer.quic_endpoints,
                &tls.quic,
                &addrs,
                &target.host,
                &first,
                limit,
                dialer.pacer,
            )
            .await?;
            session.connected(Instant::now());
            dialer.last_good.remember(target, conn.remote_address());
            Ok((
                quic::spawn_link(
                    conn.clone(),
                    send,
                    recv,
                    config.write_deadline,
                    quic::BulkStream::Open,
                ),
                how.describe(),
                Some(conn),
            ))
        }
    }
}

/// What one link measured: whether it opened, and its round trip.
struct LinkStats {
    /// When HELLO went out (WebSocket: right after the upgrade).
    hello_at: Instant,
    /// Whether WELCOME arrived.
    opened: bool,
    /// The round trip: HELLO to WELCOME (QUIC's own estimate replaces it at the end).
    rtt: Option<Duration>,
}

/// What [`drive`] needs besides the link: the configuration, the status to keep, the
/// credentials the link was made with (`generation` of `creds`), how the handshake went, when the
/// attempt started, the QUIC probe to run beside a fallback link, and where to put what the link
/// measured.
struct Driven<'a, 'p> {
    config: &'a EdgeConfig,
    status: &'a Status,
    creds: &'a CredentialStore,
    generation: u64,
    how: &'a str,
    started: Instant,
    probe: Option<Probe<'p>>,
    stats: &'a mut LinkStats,
}

/// Runs one link's session until it ends; keeps `hub_link_up` (1 while open),
/// `hub_link_reconnects_total` (once at the end, by cause, unless the edge is stopping) and the
/// status.
async fn drive(
    mut link: Link,
    mut session: Session,
    mut exchange: Exchange,
    driven: Driven<'_, '_>,
    shutdown: &Shutdown,
) -> Ended {
    let Driven {
        config,
        status,
        creds,
        generation,
        how,
        started,
        mut probe,
        stats,
    } = driven;
    let (protocol, peer) = (link.protocol, link.peer);
    // The link ended for this cause (`None`: the edge is stopping), said so.
    let report = |cause: Option<Cause>, why: &str| {
        METRICS.link_up[protocol as usize].set(0);
        if let Some(cause) = cause {
            METRICS.reconnect(cause);
        }
        status.ended(cause.map(|c| (c, why)));
    };
    let mut opened = false;
    // Set when the probe found QUIC again and the link is being closed to move to it.
    let switching = Cell::new(false);
    loop {
        let now = Instant::now();
        while let Some(event) = session.poll_event() {
            let Some(event) = exchange.handle(&mut session, event) else {
                continue;
            };
            match event {
                Event::Open => {
                    opened = true;
                    METRICS.link_up[protocol as usize].set(1);
                    status.opened(peer, link.live().clone());
                    stats.opened = true;
                    stats.rtt = Some(stats.hello_at.elapsed());
                    creds.worked(generation);
                    log::info!(
                        "connected to the cloud over {protocol} at {peer} ({how}, {:.1} ms); heartbeat every {:.1}s",
                        started.elapsed().as_secs_f64() * 1000.0,
                        session
                            .heartbeat_interval()
                            .unwrap_or(config.heartbeat)
                            .as_secs_f64()
                    );
                }
                Event::Close(code, detail) => {
                    let detail = if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    };
                    let why = format!("{code}{detail}");
                    let cause = close_cause(code);
                    let ended = if code == CloseCode::ShuttingDown && switching.get() {
                        log::info!(
                            "closing the WebSocket link to the cloud ({peer}) to move to QUIC"
                        );
                        report(
                            Some(Cause::BackToQuic),
                            "moving back from WebSocket to QUIC",
                        );
                        Ended::BackToQuic
                    } else if code == CloseCode::ShuttingDown {
                        log::info!("closing the link to the cloud ({protocol}, {peer}): {code}");
                        report(None, "");
                        Ended::Shutdown
                    } else if code == CloseCode::Timeout && opened {
                        // The path went silent under an open link. Before WELCOME the cloud
                        // answered the handshake, so the backoff applies (`Ended::Lost`).
                        lost(opened, protocol, peer, &why);
                        Ended::Silent
                    } else if code == CloseCode::IdentityMismatch && !opened {
                        // The cloud says the certificate is not this node.
                        lost(opened, protocol, peer, &why);
                        Ended::CertificateRefused(why.clone())
                    } else {
                        lost(opened, protocol, peer, &why);
                        Ended::Lost
                    };
                    if !matches!(ended, Ended::Shutdown | Ended::BackToQuic) {
                        report(cause, &why);
                    }
                    exchange.finish();
                    link.close(code, CLOSE_LINGER).await;
                    return ended;
                }
                _ => {}
            }
        }
        exchange.fill(&mut session, |lane| link.room(lane));
        link.live().set_unacknowledged(session.unacknowledged());
        link.tick(&session, now);
        link.flush(&mut session, now);
        let other = async {
            shutdown.wait().await;
            Wake::Stop(CloseCode::ShuttingDown)
        }
        .or(async {
            exchange.added().await;
            Wake::Added
        })
        .or(async {
            match probe.as_mut() {
                Some(p) if !switching.get() => {
                    p.as_mut().await;
                    switching.set(true);
                    Wake::Stop(CloseCode::ShuttingDown)
                }
                _ => std::future::pending().await,
            }
        });
        match link.wait(&session, other).await {
            Wake::Inbound(Inbound::Frame(bytes)) => {
                session.handle_owned(Instant::now(), bytes);
                link.handle_waiting(&mut session);
            }
            Wake::Inbound(Inbound::Closed(LinkError::Frame(e))) => session.fail(Instant::now(), e),
            Wake::Inbound(Inbound::Closed(LinkError::WriteTimeout(d))) => session.close(
                CloseCode::WriteTimeout,
                format!(
                    "writes blocked for {:.1}s (write-deadline)",
                    d.as_secs_f64()
                ),
            ),
            Wake::Inbound(Inbound::Closed(e)) => {
                lost(opened, protocol, peer, &e.to_string());
                report(Some(e.cause()), &e.to_string());
                if matches!(e, LinkError::Closed(CloseCode::Replaced)) {
                    log::warn!(
                        "another connection as node {} replaced this one: if this repeats, two gateways are using this node's identity (a copied configuration or certificate)",
                        config.node_id
                    );
                }
                exchange.finish();
                return match e {
                    // Over QUIC the cloud checks the certificate after the client finished its
                    // handshake, so its refusal arrives on the link.
                    LinkError::CertificateRefused(why) if !opened => Ended::CertificateRefused(why),
                    LinkError::Closed(CloseCode::IdentityMismatch) if !opened => {
                        Ended::CertificateRefused(e.to_string())
                    }
                    _ => Ended::Lost,
                };
            }
            Wake::Timer => session.handle_timeout(Instant::now()),
            Wake::Stop(code) => session.close(code, ""),
            Wake::Added => {}
        }
    }
}

/// Logs the end of a link: "lost" once it was open, "cannot connect" while still in the handshake
/// (with QUIC, for example, the cloud checks the node certificate after the client finished).
fn lost(opened: bool, protocol: Protocol, peer: SocketAddr, why: &str) {
    if opened {
        log::warn!("link to the cloud lost ({protocol}, {peer}): {why}");
    } else {
        log::warn!("cannot connect to the cloud at {peer} over {protocol}: {why}");
    }
}
