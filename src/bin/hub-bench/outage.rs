//! `outage`: a paced stream edge->cloud across a link that is cut in the middle of it.
//!
//! The publisher sends `count` numbered messages at `rate` per second; `cut_after` seconds after
//! the first, the link emulator (`scripts/netem.py run`, or `hub-bench relay`) gets SIGUSR1 and
//! drops everything, `cut_seconds` later SIGUSR2 and forwards again. The subscriber records every
//! arrival; the report gives the time from the restore to the first message delivered after it
//! and to the last missing one (drained), and how many were lost, repeated or out of order.
//! Through hub (the application endpoints) or, with `--mqtt`, through MQTT brokers at QoS 1.

use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message as WsMessage;
use futures_util::SinkExt;
use hub::client;
use hub::message::Message;
use hub::transport::timeout;

use crate::mqtt;

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "outage")]
/// A paced stream across a link that is cut (SIGUSR1 to --link-pid) and restored (SIGUSR2) in
/// the middle of it: time from the restore to the first and the last delivery, lost, duplicates.
pub struct Outage {
    /// endpoint to publish at (ws://HOST:PORT or unix:PATH; with --mqtt a broker, HOST:PORT or
    /// unix:PATH)
    #[argh(option)]
    publish: String,
    /// resource to publish to (with --mqtt: the topic)
    #[argh(option)]
    resource: String,
    /// endpoint to subscribe at
    #[argh(option)]
    subscribe: String,
    /// resource prefix to subscribe to (with --mqtt: the topic filter, subscribed at QoS 1)
    #[argh(option)]
    prefix: String,
    /// process id of the link emulator to signal
    #[argh(option)]
    link_pid: u32,
    /// messages in the stream (default 20000)
    #[argh(option, default = "20_000")]
    count: u64,
    /// content bytes per message (default 256)
    #[argh(option, default = "256")]
    size: usize,
    /// messages published per second (default 1000)
    #[argh(option, default = "1000.0")]
    rate: f64,
    /// seconds from the first message to the cut (default 2)
    #[argh(option, default = "2.0")]
    cut_after: f64,
    /// seconds the link stays cut (default 30)
    #[argh(option, default = "30.0")]
    cut_seconds: f64,
    /// seconds without any delivery, after the restore, before giving up on the rest (default
    /// 60)
    #[argh(option, default = "60.0")]
    give_up: f64,
    /// seconds to keep listening for duplicates once everything arrived (default 1)
    #[argh(option, default = "1.0")]
    linger: f64,
    /// the endpoints are MQTT brokers (QoS 1 both ways)
    #[argh(switch)]
    mqtt: bool,
}

/// What the subscriber saw, message by message.
struct Arrivals {
    seen: Vec<bool>,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    highest: Option<u64>,
    /// Arrival times of the first delivery at or after `restored` (set once the restore is known)
    /// and of the delivery that completed the stream.
    first_after: Option<Instant>,
    drained: Option<Instant>,
    before_cut: u64,
}

impl Arrivals {
    fn new(count: u64) -> Arrivals {
        Arrivals {
            seen: vec![false; count as usize],
            distinct: 0,
            duplicates: 0,
            out_of_order: 0,
            highest: None,
            first_after: None,
            drained: None,
            before_cut: 0,
        }
    }

    /// Records message `n` arriving at `at`; `cut` and `restored` are the emulator's moments so
    /// far. Numbers beyond the stream are ignored.
    fn record(&mut self, n: u64, at: Instant, cut: Option<Instant>, restored: Option<Instant>) {
        let Some(slot) = self.seen.get_mut(n as usize) else {
            return;
        };
        if *slot {
            self.duplicates += 1;
            return;
        }
        *slot = true;
        self.distinct += 1;
        if self.highest.is_some_and(|h| n < h) {
            self.out_of_order += 1;
        }
        self.highest = self.highest.max(Some(n));
        if cut.is_none_or(|c| at < c) {
            self.before_cut += 1;
        }
        if restored.is_some_and(|r| at >= r) && self.first_after.is_none() {
            self.first_after = Some(at);
        }
        if self.distinct == self.seen.len() as u64 {
            self.drained = Some(at);
        }
    }
}

/// Cut and restore moments, shared between the signalling task and the receiver.
#[derive(Default)]
struct Moments {
    cut: Option<Instant>,
    restored: Option<Instant>,
}

fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map_err(|e| format!("kill {sig} {pid}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "kill {sig} {pid} failed: is the link emulator running?"
        ))
    }
}

/// A subscription that yields message numbers.
enum Sub {
    Hub(Box<client::Connection>),
    Mqtt(mqtt::Client),
}

impl Sub {
    /// The next message's number (None for messages without one), or an error.
    async fn next(&mut self) -> Result<Option<u64>, String> {
        match self {
            Sub::Hub(ws) => match client::next(ws).await {
                Some(Ok(m)) => Ok(crate::number(&m.content)),
                Some(Err(e)) => Err(e),
                None => Err("subscriber closed".into()),
            },
            Sub::Mqtt(c) => loop {
                let p = c.read().await?;
                if p.kind != 3 {
                    continue;
                }
                let (qos, id, payload) = p.publish_parts()?;
                if qos > 0 {
                    c.puback(id);
                    // Acknowledge at once: the broker holds back what it has in flight.
                    c.flush().await?;
                }
                return Ok(mqtt::counter(payload));
            },
        }
    }
}

/// Runs the stream and prints one line of results.
pub async fn run(o: Outage) -> Result<(), String> {
    if o.rate <= 0.0 || o.count == 0 {
        return Err("--rate and --count must be positive".into());
    }
    let pid = std::process::id();
    let mut sub = if o.mqtt {
        let mut c =
            mqtt::Client::connect(&o.subscribe, &format!("hub-bench-out-sub-{pid}")).await?;
        c.subscribe(&o.prefix, 1).await?;
        Sub::Mqtt(c)
    } else {
        let path = format!("/?resource={}", o.prefix);
        Sub::Hub(Box::new(client::connect(&o.subscribe, &path).await?))
    };
    let moments = std::sync::Arc::new(std::sync::Mutex::new(Moments::default()));

    // Arrivals are read in a task of their own and handed over with their time, so that the
    // receiver below can wait with a timeout without cutting a read in half.
    let (arrived_tx, arrived_rx) = smol::channel::unbounded::<(u64, Instant)>();
    let reader = smol::spawn(async move {
        loop {
            if let Some(n) = sub.next().await? {
                if arrived_tx.send((n, Instant::now())).await.is_err() {
                    return Ok::<(), String>(());
                }
            }
        }
    });
    // The receiver: until everything arrived (then `linger` more), or `give_up` quiet seconds
    // after the restore.
    let (count, give_up, linger) = (o.count, o.give_up, o.linger);
    let seen_moments = moments.clone();
    let receiver = smol::spawn(async move {
        let mut a = Arrivals::new(count);
        loop {
            let restored = seen_moments.lock().expect("moments").restored;
            let wait = match (a.drained, restored) {
                (Some(d), _) => {
                    (d + Duration::from_secs_f64(linger)).saturating_duration_since(Instant::now())
                }
                (None, Some(_)) => Duration::from_secs_f64(give_up),
                // Before the restore: wake up now and then to learn of it.
                (None, None) => Duration::from_millis(100),
            };
            if wait.is_zero() {
                return Ok::<_, String>(a);
            }
            match timeout(wait, arrived_rx.recv()).await {
                Some(Ok((n, at))) => {
                    let m = seen_moments.lock().expect("moments");
                    a.record(n, at, m.cut, m.restored);
                }
                Some(Err(_)) => return Err("the subscription ended".to_owned()),
                None if a.drained.is_some() || restored.is_some() => return Ok(a),
                None => {}
            }
        }
    });

    // The cut: signalled from its own task so that the publisher's pace does not move it.
    let started = Instant::now();
    let (link_pid, cut_after, cut_seconds) = (o.link_pid, o.cut_after, o.cut_seconds);
    let cut_moments = moments.clone();
    let cutter = smol::spawn(async move {
        smol::Timer::at(started + Duration::from_secs_f64(cut_after)).await;
        signal(link_pid, "-USR1")?;
        let at = Instant::now();
        cut_moments.lock().expect("moments").cut = Some(at);
        smol::Timer::at(at + Duration::from_secs_f64(cut_seconds)).await;
        signal(link_pid, "-USR2")?;
        cut_moments.lock().expect("moments").restored = Some(Instant::now());
        Ok::<_, String>(())
    });

    if o.mqtt {
        publish_mqtt(&o, started).await?;
    } else {
        publish_hub(&o, started).await?;
    }
    let published_in = started.elapsed();
    cutter.await?;
    let a = match receiver.await {
        Ok(a) => a,
        Err(e) if reader.is_finished() => return Err(reader.await.err().unwrap_or(e)),
        Err(e) => return Err(e),
    };
    drop(reader);
    let (cut, restored) = {
        let m = moments.lock().expect("moments");
        (m.cut, m.restored)
    };
    let restored = restored.ok_or("the link was never restored")?;
    let since = |t: Option<Instant>| match t {
        Some(t) => format!(
            "{:.0} ms",
            t.saturating_duration_since(restored).as_secs_f64() * 1e3
        ),
        None => "never".to_owned(),
    };
    let cut_at = cut.map_or(0.0, |c| c.duration_since(started).as_secs_f64());
    println!(
        "{} messages of {} B at {:.0}/s (published in {:.1} s), link cut at {cut_at:.1} s for {cut_seconds} s: first delivered {} after the restore, drained {} after it; {} lost, {} duplicates, {} out of order ({} delivered before the cut)",
        o.count,
        o.size,
        o.rate,
        published_in.as_secs_f64(),
        since(a.first_after),
        since(a.drained),
        o.count - a.distinct,
        a.duplicates,
        a.out_of_order,
        a.before_cut
    );
    Ok(())
}

/// The moment message `n` is due at `rate` per second from `started`.
fn due(started: Instant, n: u64, rate: f64) -> Instant {
    started + Duration::from_secs_f64(n as f64 / rate)
}

/// Publishes the stream at the hub endpoint, paced, with at most 4096 messages awaiting their
/// "accepted" notice (the edge accepts into its outbox while the link is cut).
async fn publish_hub(o: &Outage, started: Instant) -> Result<(), String> {
    let publisher = client::connect(&o.publish, "/").await?;
    let (mut tx, rx) = publisher.split();
    let count = o.count;
    let (notices, acked_rx) = crate::count_accepted(rx, count);
    let mut accepted = 0u64;
    for n in 0..count {
        let at = due(started, n, o.rate);
        if at > Instant::now() {
            tx.flush().await.map_err(|e| e.to_string())?;
            smol::Timer::at(at).await;
        }
        while n - accepted >= 4096 {
            tx.flush().await.map_err(|e| e.to_string())?;
            accepted = acked_rx
                .recv()
                .await
                .map_err(|_| "notices stopped".to_owned())?;
        }
        let mut m = Message {
            source: "hub-bench".into(),
            group: "bench".into(),
            operation: "update".into(),
            resource: o.resource.clone(),
            content: crate::content(o.size, n),
            ..Message::default()
        };
        m.fill_header();
        tx.feed(WsMessage::text(m.to_json()))
            .await
            .map_err(|e| e.to_string())?;
    }
    tx.flush().await.map_err(|e| e.to_string())?;
    notices.await.map(|_| ())
}

/// Publishes the stream at the MQTT broker at QoS 1, paced, with at most 4096 awaiting PUBACK
/// (the edge broker acknowledges while its bridge is cut off).
async fn publish_mqtt(o: &Outage, started: Instant) -> Result<(), String> {
    let pid = std::process::id();
    let mut p = mqtt::Client::connect(&o.publish, &format!("hub-bench-out-pub-{pid}")).await?;
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut payload = vec![b'x'; o.size.max(20)];
    while sent < o.count || acked < o.count {
        if sent < o.count && sent - acked < 4096 {
            let at = due(started, sent, o.rate);
            if at > Instant::now() {
                // PUBACKs wait in the socket until the window is full: a read is never cut short.
                p.flush().await?;
                smol::Timer::at(at).await;
            }
            let head = format!("{sent} ");
            payload[..head.len()].copy_from_slice(head.as_bytes());
            p.publish(&o.resource, &payload, 1, (sent % 65535 + 1) as u16);
            sent += 1;
            continue;
        }
        p.flush().await?;
        if p.read().await?.kind == 4 {
            acked += 1;
        }
    }
    Ok(())
}
