//! `hub-bench`: load for a running cloud/edge pair through their application endpoints, like
//! iperf for hub. It prints figures; it never decides pass or fail.
//!
//! - `throughput`: publish N messages at one endpoint (pipelined, a bounded number awaiting their
//!   "accepted" notice) while a subscriber at the other counts them; prints messages/s and MB/s
//!   to "accepted" and to "delivered", and checks that all arrived, in order, once. With several
//!   `--subscribe` endpoints (one per node) it publishes round robin to their nodes.
//!   With `--duration` it publishes for a fixed time with a bounded number of messages in flight
//!   end to end, and prints the goodput: what was delivered within that time.
//! - `latency`: sequential sync requests answered by an application on the other side
//!   (`hub sub --echo`); prints p50, p99 and max round trip.
//! - `mqtt`: the same jobs through MQTT brokers, with one MQTT 3.1.1 client: a Mosquitto bridge
//!   for comparison, and hub's own MQTT listeners (`--topic T` at the edge, `--subscribe-topic
//!   node/NODE/T` in the cloud, or the reverse).
//! - `mqtt-idle`: many idle subscribed MQTT connections to one broker, for its memory per
//!   connection.
//! - `outage`: a paced stream across a link that is cut and restored in the middle of it; prints
//!   the time from the restore to the first and the last delivery, and what was lost or repeated.
//! - `scrape`: repeated `GET /metrics` of a hub's operations endpoint, or `/nodes` of a cloud's
//!   application endpoint; prints the response size, wall time and the hub's CPU per request.

mod mqtt;
mod outage;
mod relay;
mod scale;
mod scrape;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use argh::FromArgs;
use async_tungstenite::tungstenite::Message as WsMessage;
use futures_util::SinkExt;
use hub::client;
use hub::message::Message;
use hub::transport::timeout;
use smol::stream::StreamExt;

#[derive(FromArgs)]
/// Load for a running hub pair, through the application endpoints.
struct Bench {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Throughput(Throughput),
    Latency(Latency),
    Mqtt(Mqtt),
    MqttIdle(mqtt::Idle),
    Relay(Relay),
    Scale(scale::Scale),
    Scrape(scrape::Scrape),
    Outage(outage::Outage),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "relay")]
/// Forward 127.0.0.1 traffic to a target with a delay each way; SIGUSR1 blackholes it, SIGUSR2
/// restores it.
struct Relay {
    /// where to forward (IP:PORT)
    #[argh(option)]
    to: std::net::SocketAddr,
    /// relay UDP (QUIC) instead of TCP
    #[argh(switch)]
    udp: bool,
    /// emulated round trip in milliseconds (half of it each way; default 0)
    #[argh(option, default = "0.0")]
    rtt_ms: f64,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "mqtt")]
/// The same jobs through MQTT brokers (a Mosquitto bridge, hub's MQTT listeners): throughput, or
/// with --requests, sequential request round trips at QoS 1.
struct Mqtt {
    /// broker to publish at (HOST:PORT, plain TCP); with --requests, the requester's broker
    #[argh(option)]
    publish: String,
    /// broker to subscribe at (HOST:PORT, plain TCP); with --requests, the echoing responder's
    #[argh(option)]
    subscribe: String,
    /// topic (with --requests: the requests' topic)
    #[argh(option)]
    topic: String,
    /// topic the subscriber subscribes to, where it differs from --topic (through hub: the
    /// cloud's node/NODE/T for the edge's T, or the edge's T for the cloud's node/NODE/T)
    #[argh(option)]
    subscribe_topic: Option<String>,
    /// make this many sequential requests instead: the responder publishes each back on
    /// --reply-topic, which the requester awaits; prints p50, p99 and max round trip
    #[argh(option, default = "0")]
    requests: u64,
    /// topic the responder answers on (with --requests)
    #[argh(option, default = "String::new()")]
    reply_topic: String,
    /// quality of service, 0 or 1 (default 1)
    #[argh(option, default = "1")]
    qos: u8,
    /// messages to send (default 100000)
    #[argh(option, default = "100_000")]
    count: u64,
    /// payload bytes per message (default 256)
    #[argh(option, default = "256")]
    size: usize,
    /// messages awaiting PUBACK at most, at QoS 1, or published but not yet received at most,
    /// at QoS 0 (default 4096); with --duration, published but not yet delivered at most, at
    /// either QoS
    #[argh(option, default = "4096")]
    inflight: u64,
    /// publish for this many seconds instead of --count messages, and report what was delivered
    /// within them (goodput)
    #[argh(option)]
    duration: Option<f64>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "throughput")]
/// Publish at one endpoint, receive at the other; messages/s and MB/s.
struct Throughput {
    /// endpoint to publish at (ws://HOST:PORT or unix:PATH)
    #[argh(option)]
    publish: String,
    /// resource to publish to (from the cloud: node/NODE-ID/...); each `{i}` in it is replaced
    /// by the index (from 0) of the --subscribe endpoint the message is for
    #[argh(option)]
    resource: String,
    /// endpoint to subscribe at; given k times (not with --duration), message n is for endpoint
    /// n mod k (round robin over k nodes: `--resource node/n-{i}/down`), and each endpoint
    /// must receive its own messages in order, once
    #[argh(option)]
    subscribe: Vec<String>,
    /// resource prefix to subscribe to (as seen there)
    #[argh(option)]
    prefix: String,
    /// messages to send (default 100000)
    #[argh(option, default = "100_000")]
    count: u64,
    /// content bytes per message (default 256)
    #[argh(option, default = "256")]
    size: usize,
    /// with several --subscribe: one publishing connection for each endpoint's messages instead
    /// of one for all (each with its own --inflight)
    #[argh(switch)]
    publisher_each: bool,
    /// messages awaiting their notice at most (default 4096); with --duration, messages
    /// published but not yet delivered at most
    #[argh(option, default = "4096")]
    inflight: u64,
    /// publish for this many seconds instead of --count messages, and report what was delivered
    /// within them (goodput); what is in flight at the end is left to the hubs
    #[argh(option)]
    duration: Option<f64>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "latency")]
/// Sequential requests answered by an echoing application on the other side.
struct Latency {
    /// endpoint to ask at
    #[argh(option)]
    url: String,
    /// resource the echoing application answers (from the cloud: node/NODE-ID/...)
    #[argh(option)]
    resource: String,
    /// requests (default 1000)
    #[argh(option, default = "1000")]
    count: usize,
    /// content bytes per request (default 64)
    #[argh(option, default = "64")]
    size: usize,
}

fn content(size: usize, n: u64) -> Vec<u8> {
    // A JSON string of exactly `size` bytes (at least the number itself), counter first.
    let head = format!("\"{n} ");
    let fill = size.saturating_sub(head.len() + 1);
    let mut c = head.into_bytes();
    c.extend(std::iter::repeat_n(b'x', fill));
    c.push(b'"');
    c
}

fn number(content: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(content).ok()?;
    text.trim_start_matches('"').split(' ').next()?.parse().ok()
}

/// The longest a throughput run's subscriber waits for its next message before the run fails.
const STALL: Duration = Duration::from_secs(30);

async fn throughput(t: Throughput) -> Result<(), String> {
    let path = format!("/?resource={}", t.prefix);
    let ways = t.subscribe.len() as u64;
    let mut subs = Vec::with_capacity(t.subscribe.len());
    for url in &t.subscribe {
        subs.push(client::connect(url, &path).await?);
    }
    let mut publishers = Vec::new();
    for _ in 0..if t.publisher_each { ways } else { 1 } {
        publishers.push(client::connect(&t.publish, "/").await?);
    }
    let count = t.count;
    let started = Instant::now();

    // Endpoint j receives messages j, j + k, j + 2k, ... of the k endpoints, in that order.
    let receivers: Vec<_> = subs
        .into_iter()
        .zip(0u64..)
        .map(|(mut sub, j)| {
            smol::spawn(async move {
                let mut next = j;
                while next < count {
                    let Some(got) = timeout(STALL, client::next(&mut sub)).await else {
                        return Err(format!(
                            "endpoint {j}: nothing for {} s while waiting for {next}",
                            STALL.as_secs()
                        ));
                    };
                    match got {
                        Some(Ok(m)) => match number(&m.content) {
                            Some(n) if n == next => next += ways,
                            Some(n) => {
                                let then = what_follows(&mut sub).await;
                                return Err(format!(
                                    "endpoint {j} received {n} when {next} was due; then {then}"
                                ));
                            }
                            None => {}
                        },
                        Some(Err(e)) => return Err(e),
                        None => return Err(format!("subscriber {j} closed before {next}")),
                    }
                }
                Ok(started.elapsed())
            })
        })
        .collect();

    let t = std::sync::Arc::new(t);
    let step = publishers.len() as u64;
    let sharers: Vec<_> = publishers
        .into_iter()
        .zip(0u64..)
        .map(|(publisher, first)| smol::spawn(publish_share(t.clone(), publisher, first, step)))
        .collect();
    let mut last_accepted = started;
    for sharer in sharers {
        last_accepted = last_accepted.max(sharer.await?);
    }
    let to_accepted = last_accepted.duration_since(started);
    let mut to_delivered = Duration::ZERO;
    for receiver in receivers {
        to_delivered = to_delivered.max(receiver.await?);
    }
    let mb = (count as f64) * (t.size as f64) / 1e6;
    let spread = match (ways, step) {
        (1, _) => String::new(),
        (k, 1) => format!(" (round robin over {k} endpoints)"),
        (k, _) => format!(" (round robin over {k} endpoints, a publisher for each)"),
    };
    println!(
        "{count} messages of {} B{spread}: accepted {:.0} msg/s ({:.1} MB/s), delivered {:.0} msg/s ({:.1} MB/s), in order, once",
        t.size,
        count as f64 / to_accepted.as_secs_f64(),
        mb / to_accepted.as_secs_f64(),
        count as f64 / to_delivered.as_secs_f64(),
        mb / to_delivered.as_secs_f64()
    );
    Ok(())
}

/// The numbers of the next messages a subscriber gets (at most 20, within 2 s), to tell a lost
/// message from a late one when a run fails on one out of order.
async fn what_follows(sub: &mut client::Connection) -> String {
    let until = Instant::now() + Duration::from_secs(2);
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let left = until.saturating_duration_since(Instant::now());
        match timeout(left, client::next(sub)).await {
            Some(Some(Ok(m))) => seen.extend(number(&m.content).map(|n| n.to_string())),
            _ => break,
        }
    }
    match seen.is_empty() {
        true => "nothing within 2 s".to_owned(),
        false => seen.join(" "),
    }
}

/// Publishes messages `first`, `first + step`, ... below `t.count` on `publisher`, with at most
/// `t.inflight` awaiting their notice, and returns the moment the last was accepted.
async fn publish_share(
    t: std::sync::Arc<Throughput>,
    publisher: client::Connection,
    first: u64,
    step: u64,
) -> Result<Instant, String> {
    let (mut tx, rx) = publisher.split();
    let ways = t.subscribe.len() as u64;
    let mine = (t.count.saturating_sub(first)).div_ceil(step);
    let (notices, acked_rx) = count_accepted(rx, mine);
    let mut accepted = 0u64;
    for sent in 0..mine {
        while sent - accepted >= t.inflight {
            accepted = acked_rx
                .recv()
                .await
                .map_err(|_| "notices stopped".to_owned())?;
            while let Ok(a) = acked_rx.try_recv() {
                accepted = a;
            }
        }
        tx.feed(WsMessage::text(numbered(&t, first + sent * step, ways)))
            .await
            .map_err(|e| e.to_string())?;
        if sent % 64 == 63 {
            futures_flush(&mut tx).await?;
        }
    }
    futures_flush(&mut tx).await?;
    notices.await
}

/// Reads a publisher's notices until `count` messages were accepted: sends the running count of
/// accepted messages on the returned channel after each, and finishes with the moment of the last
/// one, or why publishing failed (a refusal, the connection closed).
pub(crate) fn count_accepted<S, E>(
    mut notices: S,
    count: u64,
) -> (
    smol::Task<Result<Instant, String>>,
    smol::channel::Receiver<u64>,
)
where
    S: smol::stream::Stream<Item = Result<WsMessage, E>> + Unpin + Send + 'static,
    E: std::fmt::Display,
{
    let (acked_tx, acked_rx) = smol::channel::unbounded::<u64>();
    let task = smol::spawn(async move {
        let mut accepted = 0u64;
        while accepted < count {
            match notices.next().await {
                Some(Ok(WsMessage::Text(t))) => {
                    let m = Message::from_json(&t).map_err(|e| e.to_string())?;
                    match m.operation.as_str() {
                        "accepted" => {
                            accepted += 1;
                            let _ = acked_tx.try_send(accepted);
                        }
                        "error" => return Err(format!("refused: {}", client::notice_error(&m))),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("publisher connection closed".into()),
            }
        }
        Ok(Instant::now())
    });
    (task, acked_rx)
}

/// Publishes for `secs` seconds with at most `t.inflight` messages published but not yet
/// delivered, and prints what was delivered within that time. What is still in flight at the end
/// is left to the hubs: run the next measurement through a fresh edge (or another resource).
async fn goodput(t: Throughput, secs: f64) -> Result<(), String> {
    let path = format!("/?resource={}", t.prefix);
    let mut sub = client::connect(&t.subscribe[0], &path).await?;
    let publisher = client::connect(&t.publish, "/").await?;
    let (mut tx, mut rx) = publisher.split();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let (delivered_tx, delivered_rx) = smol::channel::unbounded::<u64>();

    let receiver = smol::spawn(async move {
        let mut next = 0u64;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(next);
            }
            let Some(got) = timeout(left, client::next(&mut sub)).await else {
                return Ok(next);
            };
            match got {
                Some(Ok(m)) => match number(&m.content) {
                    Some(n) if n == next => {
                        next += 1;
                        let _ = delivered_tx.try_send(next);
                    }
                    Some(n) => return Err(format!("received {n} when {next} was due")),
                    None => {}
                },
                Some(Err(e)) => return Err(e),
                None => return Err(format!("subscriber closed after {next}")),
            }
        }
    });

    // Notices are read (and refusals reported) but do not pace the publisher here.
    let notices = smol::spawn(async move {
        loop {
            match rx.next().await {
                Some(Ok(WsMessage::Text(t))) => {
                    let m = Message::from_json(&t).map_err(|e| e.to_string())?;
                    if m.operation == "error" {
                        return Err::<(), _>(format!("refused: {}", client::notice_error(&m)));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("publisher connection closed".into()),
            }
        }
    });

    let (mut n, mut delivered) = (0u64, 0u64);
    'publishing: while Instant::now() < deadline {
        while n - delivered >= t.inflight {
            futures_flush(&mut tx).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, delivered_rx.recv()).await {
                Some(Ok(d)) => delivered = d,
                Some(Err(_)) | None => break 'publishing,
            }
            while let Ok(d) = delivered_rx.try_recv() {
                delivered = d;
            }
        }
        if notices.is_finished() {
            notices.await?;
            return Err("notices stopped".into());
        }
        tx.feed(WsMessage::text(numbered(&t, n, 1)))
            .await
            .map_err(|e| e.to_string())?;
        n += 1;
        if n % 64 == 0 {
            futures_flush(&mut tx).await?;
        }
    }
    futures_flush(&mut tx).await?;
    let delivered = receiver.await?;
    drop(notices);
    let rate = delivered as f64 / secs;
    println!(
        "delivered {rate:.0} msg/s ({:.2} MB/s) over {secs} s: {delivered} messages of {} B in order, once ({} more published, in flight at the end; at most {} allowed)",
        rate * t.size as f64 / 1e6,
        t.size,
        n - delivered,
        t.inflight
    );
    Ok(())
}

/// Message `n` of a throughput run over `ways` subscribing endpoints, as JSON; its content is a
/// JSON string of `t.size` bytes that begins with `n`, its resource `t.resource` with each `{i}`
/// replaced by `n mod ways`.
fn numbered(t: &Throughput, n: u64, ways: u64) -> String {
    let resource = match t.resource.contains("{i}") {
        true => t.resource.replace("{i}", &(n % ways).to_string()),
        false => t.resource.clone(),
    };
    let mut m = Message {
        source: "hub-bench".into(),
        group: "bench".into(),
        operation: "update".into(),
        resource,
        content: content(t.size, n),
        ..Message::default()
    };
    m.fill_header();
    m.to_json()
}

async fn futures_flush<S>(tx: &mut S) -> Result<(), String>
where
    S: futures_util::Sink<WsMessage, Error = async_tungstenite::tungstenite::Error> + Unpin,
{
    tx.flush().await.map_err(|e| e.to_string())
}

async fn latency(l: Latency) -> Result<(), String> {
    let mut ws = client::connect(&l.url, "/").await?;
    let mut samples = Vec::with_capacity(l.count);
    for n in 0..l.count as u64 {
        let mut m = Message {
            sync: true,
            source: "hub-bench".into(),
            group: "bench".into(),
            operation: "query".into(),
            resource: l.resource.clone(),
            content: content(l.size, n),
            ..Message::default()
        };
        m.fill_header();
        let t0 = Instant::now();
        client::request(&mut ws, &m, Duration::from_secs(10)).await?;
        samples.push(t0.elapsed());
    }
    println!("{}", percentiles(samples));
    Ok(())
}

/// "N requests: p50 .., p99 .., max .." of round-trip samples.
fn percentiles(mut samples: Vec<Duration>) -> String {
    if samples.is_empty() {
        return "0 requests".to_owned();
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{} requests: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        samples.len(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(samples[samples.len() - 1])
    )
}

fn main() -> ExitCode {
    let bench: Bench = argh::from_env();
    let result = smol::block_on(async {
        match bench.command {
            Command::Throughput(t) if t.subscribe.is_empty() => {
                Err("throughput needs --subscribe".to_owned())
            }
            Command::Throughput(t) if t.subscribe.len() > 1 && t.duration.is_some() => {
                Err("--duration takes one --subscribe".to_owned())
            }
            Command::Throughput(t) => match t.duration {
                Some(secs) if secs > 0.0 => goodput(t, secs).await,
                Some(_) => Err("--duration is a positive number of seconds".to_owned()),
                None => throughput(t).await,
            },
            Command::Latency(l) => latency(l).await,
            Command::Scale(s) => scale::run(s).await,
            Command::Scrape(s) => scrape::run(s).await,
            Command::MqttIdle(i) => mqtt::idle(i).await,
            Command::Outage(o) => outage::run(o).await,
            Command::Relay(r) => {
                relay::run(
                    r.to,
                    r.udp,
                    Duration::from_secs_f64(r.rtt_ms.max(0.0) / 2000.0),
                )
                .await
            }
            Command::Mqtt(m) if m.requests > 0 => {
                if m.reply_topic.is_empty() {
                    return Err("--requests needs --reply-topic".to_owned());
                }
                let samples = mqtt::round_trips(
                    &m.publish,
                    &m.subscribe,
                    &m.topic,
                    &m.reply_topic,
                    m.requests,
                    m.size,
                )
                .await?;
                println!("{}", percentiles(samples));
                Ok(())
            }
            Command::Mqtt(m) if m.qos > 1 => Err("--qos is 0 or 1".to_owned()),
            Command::Mqtt(Mqtt {
                duration: Some(secs),
                ..
            }) if secs <= 0.0 => Err("--duration is a positive number of seconds".to_owned()),
            Command::Mqtt(m) if m.duration.is_some() => {
                let secs = m.duration.unwrap_or_default();
                let (received, sent, gaps) = mqtt::goodput(
                    &m.publish,
                    &m.subscribe,
                    &m.topic,
                    m.subscribe_topic.as_deref().unwrap_or(&m.topic),
                    secs,
                    m.size,
                    m.qos,
                    m.inflight,
                )
                .await?;
                let rate = received as f64 / secs;
                println!(
                    "delivered {rate:.0} msg/s ({:.2} MB/s) over {secs} s at QoS {}: {received} distinct messages of {} B, {gaps} after a gap (out of sequence) ({} more published, not delivered within the time)",
                    rate * m.size as f64 / 1e6,
                    m.qos,
                    m.size,
                    sent - received
                );
                Ok(())
            }
            Command::Mqtt(m) => {
                let (received, took) = mqtt::throughput(
                    &m.publish,
                    &m.subscribe,
                    &m.topic,
                    m.subscribe_topic.as_deref().unwrap_or(&m.topic),
                    m.count,
                    m.size,
                    m.qos,
                    m.inflight,
                )
                .await?;
                println!(
                    "{} messages of {} B at QoS {}: delivered {:.0} msg/s ({:.1} MB/s), in order, {} lost",
                    m.count,
                    m.size,
                    m.qos,
                    received as f64 / took.as_secs_f64(),
                    received as f64 * m.size as f64 / 1e6 / took.as_secs_f64(),
                    m.count - received
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hub-bench: {e}");
            ExitCode::from(1)
        }
    }
}
