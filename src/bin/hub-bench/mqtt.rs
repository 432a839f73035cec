//! Just enough MQTT 3.1.1 to load MQTT brokers the way `throughput` and `latency` load hub's
//! application endpoints: a Mosquitto bridge, and hub's own MQTT listeners (publish at the edge to
//! `T`, subscribe in the cloud to `node/{node}/T`, and the reverse), with the same client and the
//! same bounds. CONNECT, PUBLISH at QoS 0 or 1 with a bounded number awaiting PUBACK, SUBSCRIBE,
//! and PUBACK for what a subscriber receives; and many idle subscribed connections
//! ([`idle`], `hub-bench mqtt-idle`). Plain TCP (`HOST:PORT`) or a unix socket (`unix:PATH`,
//! Mosquitto 2.0's `listener 0 PATH`) to a broker on this machine.

use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use smol::Async;
use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// One MQTT connection.
pub struct Client {
    reader: BufReader<Box<dyn AsyncRead + Unpin + Send>>,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
    out: Vec<u8>,
}

type Halves = (
    Box<dyn AsyncRead + Unpin + Send>,
    Box<dyn AsyncWrite + Unpin + Send>,
);

/// The read and write halves of a connection to `addr` (`HOST:PORT` or `unix:PATH`).
fn open(addr: &str) -> Result<Halves, String> {
    let err = |e: std::io::Error| format!("MQTT connect to {addr}: {e}");
    if let Some(path) = addr.strip_prefix("unix:") {
        let s = UnixStream::connect(path).map_err(err)?;
        let w = Async::new(s.try_clone().map_err(err)?).map_err(err)?;
        return Ok((Box::new(Async::new(s).map_err(err)?), Box::new(w)));
    }
    let tcp = TcpStream::connect(addr).map_err(err)?;
    tcp.set_nodelay(true).map_err(err)?;
    let w = Async::new(tcp.try_clone().map_err(err)?).map_err(err)?;
    Ok((Box::new(Async::new(tcp).map_err(err)?), Box::new(w)))
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A received packet: its type (high nibble of the first byte), flags and body.
pub struct Packet {
    pub kind: u8,
    pub flags: u8,
    pub body: Vec<u8>,
}

impl Client {
    /// Connects with a clean session to `addr` (`HOST:PORT` or `unix:PATH`), keep alive 60 s.
    pub async fn connect(addr: &str, client_id: &str) -> Result<Client, String> {
        Client::connect_with(addr, client_id, 60, 1 << 16).await
    }

    /// Connects with a clean session to `addr`, announcing `keep_alive` seconds (0: none), and
    /// reads through a buffer of `buffer` bytes.
    pub async fn connect_with(
        addr: &str,
        client_id: &str,
        keep_alive: u16,
        buffer: usize,
    ) -> Result<Client, String> {
        let (reader, writer) = open(addr)?;
        let reader = BufReader::with_capacity(buffer, reader);
        let mut c = Client {
            reader,
            writer,
            out: Vec::new(),
        };
        let mut body = Vec::new();
        string("MQTT", &mut body);
        body.push(4); // protocol level 3.1.1
        body.push(0x02); // clean session
        body.extend_from_slice(&keep_alive.to_be_bytes());
        string(client_id, &mut body);
        c.packet(0x10, &body);
        c.flush().await?;
        let ack = hub::transport::timeout(Duration::from_secs(30), c.read())
            .await
            .ok_or_else(|| format!("MQTT: no CONNACK from {addr} within 30 s"))??;
        if ack.kind != 2 || ack.body.get(1) != Some(&0) {
            return Err(format!("MQTT connect refused: {:?}", ack.body));
        }
        Ok(c)
    }

    fn packet(&mut self, first: u8, body: &[u8]) {
        self.out.push(first);
        remaining_length(body.len(), &mut self.out);
        self.out.extend_from_slice(body);
    }

    /// Queues a PUBLISH (`id` is used at QoS 1).
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, id: u16) {
        let mut head = Vec::with_capacity(topic.len() + 4);
        string(topic, &mut head);
        if qos > 0 {
            head.extend_from_slice(&id.to_be_bytes());
        }
        self.out.push(0x30 | (qos << 1));
        remaining_length(head.len() + payload.len(), &mut self.out);
        self.out.extend_from_slice(&head);
        self.out.extend_from_slice(payload);
    }

    /// Queues a PUBACK.
    pub fn puback(&mut self, id: u16) {
        self.packet(0x40, &id.to_be_bytes());
    }

    /// Subscribes to `filter` at `qos` and waits for SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> Result<(), String> {
        let mut body = 1u16.to_be_bytes().to_vec();
        string(filter, &mut body);
        body.push(qos);
        self.packet(0x82, &body);
        self.flush().await?;
        loop {
            let p = self.read().await?;
            if p.kind == 9 {
                return Ok(());
            }
        }
    }

    /// Writes what was queued.
    pub async fn flush(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.writer
            .write_all(&self.out)
            .await
            .map_err(|e| e.to_string())?;
        self.out.clear();
        Ok(())
    }

    /// Reads one packet.
    pub async fn read(&mut self) -> Result<Packet, String> {
        read_packet(&mut self.reader).await
    }

    /// Splits off the reading half, so that one task can read (e.g. PUBACKs) while another
    /// writes; the client goes on writing, and reading from it afterwards ends at once.
    pub fn split(mut self) -> (Reader, Client) {
        let empty: Box<dyn AsyncRead + Unpin + Send> = Box::new(smol::io::empty());
        let reader = std::mem::replace(&mut self.reader, BufReader::new(empty));
        (Reader(reader), self)
    }
}

/// The reading half of a [`Client`].
pub struct Reader(BufReader<Box<dyn AsyncRead + Unpin + Send>>);

impl Reader {
    /// Reads one packet.
    pub async fn read(&mut self) -> Result<Packet, String> {
        read_packet(&mut self.0).await
    }
}

/// Reads one packet from `reader`.
async fn read_packet(
    reader: &mut BufReader<Box<dyn AsyncRead + Unpin + Send>>,
) -> Result<Packet, String> {
    let mut first = [0u8; 1];
    reader
        .read_exact(&mut first)
        .await
        .map_err(|e| format!("MQTT read: {e}"))?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        reader
            .read_exact(&mut b)
            .await
            .map_err(|e| format!("MQTT read: {e}"))?;
        len |= usize::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err("MQTT: bad remaining length".into());
        }
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("MQTT read: {e}"))?;
    Ok(Packet {
        kind: first[0] >> 4,
        flags: first[0] & 0x0f,
        body,
    })
}

impl Packet {
    /// A PUBLISH's QoS, packet id (0 at QoS 0) and payload.
    pub fn publish_parts(&self) -> Result<(u8, u16, &[u8]), String> {
        let qos = (self.flags >> 1) & 3;
        let short = || "MQTT: short PUBLISH".to_owned();
        let tlen = usize::from(u16::from_be_bytes([
            *self.body.first().ok_or_else(short)?,
            *self.body.get(1).ok_or_else(short)?,
        ]));
        let mut at = 2 + tlen;
        let mut id = 0;
        if qos > 0 {
            let b = self.body.get(at..at + 2).ok_or_else(short)?;
            id = u16::from_be_bytes([b[0], b[1]]);
            at += 2;
        }
        Ok((qos, id, self.body.get(at..).ok_or_else(short)?))
    }
}

/// The counter at the start of a payload ("N xxxx...").
pub fn counter(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(&payload[..payload.len().min(20)])
        .ok()?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Sequential request round trips at QoS 1: a requester at `req_addr` publishes `count` payloads
/// of `size` bytes to `topic`, one at a time, each time waiting for the same payload on
/// `reply_topic`; a responder at `resp_addr`, subscribed to `topic`, publishes what it receives
/// to `reply_topic`. With a bridge between the two brokers, each round trip crosses it twice.
pub async fn round_trips(
    req_addr: &str,
    resp_addr: &str,
    topic: &str,
    reply_topic: &str,
    count: u64,
    size: usize,
) -> Result<Vec<Duration>, String> {
    let pid = std::process::id();
    let mut responder = Client::connect(resp_addr, &format!("hub-bench-echo-{pid}")).await?;
    responder.subscribe(topic, 1).await?;
    let mut requester = Client::connect(req_addr, &format!("hub-bench-req-{pid}")).await?;
    requester.subscribe(reply_topic, 1).await?;
    let reply = reply_topic.to_owned();
    let echo: smol::Task<Result<(), String>> = smol::spawn(async move {
        let mut id = 0u16;
        loop {
            let p = responder.read().await?;
            if p.kind != 3 {
                continue;
            }
            let (qos, rid, payload) = p.publish_parts()?;
            if qos > 0 {
                responder.puback(rid);
            }
            id = id % 65535 + 1;
            responder.publish(&reply, payload, 1, id);
            responder.flush().await?;
        }
    });
    let mut samples = Vec::with_capacity(count as usize);
    let mut payload = vec![b'x'; size.max(20)];
    for n in 0..count {
        let head = format!("{n} ");
        payload[..head.len()].copy_from_slice(head.as_bytes());
        requester.publish(topic, &payload, 1, (n % 65535 + 1) as u16);
        let t0 = Instant::now();
        requester.flush().await?;
        loop {
            let read = hub::transport::timeout(Duration::from_secs(10), requester.read()).await;
            let Some(p) = read else {
                if echo.is_finished() {
                    echo.await?;
                }
                return Err(format!("MQTT: no reply to request {n} within 10 s"));
            };
            let p = p?;
            if p.kind != 3 {
                continue;
            }
            let (qos, rid, got) = p.publish_parts()?;
            if qos > 0 {
                requester.puback(rid);
            }
            if counter(got) == Some(n) {
                break;
            }
        }
        samples.push(t0.elapsed());
        requester.flush().await?;
    }
    drop(echo);
    Ok(samples)
}

/// Publishes `count` payloads of `size` bytes to `topic` at `pub_addr` while a subscriber at
/// `sub_addr`, subscribed to `sub_topic` (the same topic on one broker or a bridge; for hub,
/// `node/{node}/T` in the cloud for `T` at the edge, or `T` at the edge for `node/{node}/T` in the
/// cloud), counts them in order; returns how many arrived and when the last did. At most
/// `inflight` are outstanding: at QoS 1 awaiting PUBACK, at QoS 0 (which has no acknowledgment)
/// published but not yet received, end to end.
#[allow(clippy::too_many_arguments)]
pub async fn throughput(
    pub_addr: &str,
    sub_addr: &str,
    topic: &str,
    sub_topic: &str,
    count: u64,
    size: usize,
    qos: u8,
    inflight: u64,
) -> Result<(u64, Duration), String> {
    let mut sub =
        Client::connect(sub_addr, &format!("hub-bench-sub-{}", std::process::id())).await?;
    sub.subscribe(sub_topic, qos).await?;
    let mut publisher =
        Client::connect(pub_addr, &format!("hub-bench-pub-{}", std::process::id())).await?;
    let started = Instant::now();
    // The receiver reports how far it got (the next counter due), for the QoS 0 window.
    let (seen_tx, seen_rx) = smol::channel::unbounded::<u64>();
    // At QoS 1 everything must arrive, in order, once. At QoS 0 a broker may drop messages: gaps
    // are counted, and the receiver stops at the last message or after two quiet seconds.
    let receiver = smol::spawn(async move {
        let mut next = 0u64;
        let mut received = 0u64;
        let mut last_at = started.elapsed();
        while next < count {
            let read = hub::transport::timeout(Duration::from_secs(2), sub.read()).await;
            let Some(p) = read else {
                if qos == 0 {
                    break;
                }
                return Err(format!("MQTT: nothing for 2 s after {next} of {count}"));
            };
            let p = p?;
            if p.kind != 3 {
                continue;
            }
            let (qos, id, payload) = p.publish_parts()?;
            if qos > 0 {
                sub.puback(id);
            }
            let n = counter(payload).ok_or("MQTT: payload without a counter")?;
            if n != next && (qos > 0 || n < next) {
                return Err(format!("MQTT: received {n} when {next} was due"));
            }
            next = n + 1;
            received += 1;
            last_at = started.elapsed();
            if received % 64 == 0 || next == count {
                sub.flush().await?;
                let _ = seen_tx.try_send(next);
            }
        }
        sub.flush().await?;
        Ok::<_, String>((received, last_at))
    });
    // The publisher: PUBACKs are read on the same connection whenever the window is full; at
    // QoS 0 it waits for the receiver instead (at most two seconds: what is outstanding then was
    // dropped, and the receiver counts it lost).
    let mut acked = 0u64;
    let mut sent = 0u64;
    let mut seen = 0u64;
    let mut payload = vec![b'x'; size.max(20)];
    while sent < count || (qos > 0 && acked < count) {
        while sent < count && sent - if qos == 0 { seen } else { acked } < inflight {
            let head = format!("{sent} ");
            payload[..head.len()].copy_from_slice(head.as_bytes());
            publisher.publish(topic, &payload, qos, (sent % 65535 + 1) as u16);
            sent += 1;
            if publisher.out.len() > 1 << 16 {
                break;
            }
        }
        publisher.flush().await?;
        if qos > 0 && (sent - acked >= inflight || sent == count) {
            let p = publisher.read().await?;
            if p.kind == 4 {
                acked += 1;
            }
        } else if qos == 0 && sent < count && sent - seen >= inflight {
            match hub::transport::timeout(Duration::from_secs(2), seen_rx.recv()).await {
                Some(Ok(n)) => seen = n,
                Some(Err(_)) => break, // the receiver ended (and says why)
                None => seen = sent,
            }
            while let Ok(n) = seen_rx.try_recv() {
                seen = n;
            }
        }
    }
    receiver.await
}

/// Publishes payloads of `size` bytes to `topic` at `pub_addr` for `secs` seconds, with at most
/// `inflight` published but not yet delivered (end to end, as `hub-bench throughput --duration`
/// bounds hub), while a subscriber at `sub_addr`, subscribed to `sub_topic`, counts them.
/// Returns how many distinct messages arrived within the time, how many were published, and how
/// many arrivals came out of sequence (after a gap: at QoS 0 a dropped message, at QoS 1 one the
/// broker delivers later, as a bridge does when it resends after reconnecting). A run is a measurement, not a check: such arrivals
/// are counted and reported, not an error.
#[allow(clippy::too_many_arguments)]
pub async fn goodput(
    pub_addr: &str,
    sub_addr: &str,
    topic: &str,
    sub_topic: &str,
    secs: f64,
    size: usize,
    qos: u8,
    inflight: u64,
) -> Result<(u64, u64, u64), String> {
    let pid = std::process::id();
    let mut sub = Client::connect(sub_addr, &format!("hub-bench-sub-{pid}")).await?;
    sub.subscribe(sub_topic, qos).await?;
    let (mut acks, mut publisher) = Client::connect(pub_addr, &format!("hub-bench-pub-{pid}"))
        .await?
        .split();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let (delivered_tx, delivered_rx) = smol::channel::unbounded::<u64>();
    let receiver = smol::spawn(async move {
        let (mut next, mut gaps) = (0u64, 0u64);
        let mut seen = std::collections::HashSet::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok::<_, String>((seen.len() as u64, gaps));
            }
            let Some(p) = hub::transport::timeout(left, sub.read()).await else {
                return Ok((seen.len() as u64, gaps));
            };
            let p = p?;
            if p.kind != 3 {
                continue;
            }
            let (q, id, payload) = p.publish_parts()?;
            if q > 0 {
                sub.puback(id);
            }
            let n = counter(payload).ok_or("MQTT: payload without a counter")?;
            if n != next {
                gaps += 1;
            }
            next = next.max(n + 1);
            if !seen.insert(n) {
                continue; // a repeat (QoS 1 allows them)
            }
            let received = seen.len() as u64;
            let _ = delivered_tx.try_send(received);
            if received % 64 == 0 {
                sub.flush().await?;
            }
        }
    });
    // PUBACKs are read (and dropped) by a task of their own: the window is end to end.
    let acks = smol::spawn(async move {
        let mut read: Result<(), String> = Ok(());
        while read.is_ok() {
            read = acks.read().await.map(|_| ());
        }
        read
    });
    let (mut sent, mut delivered) = (0u64, 0u64);
    let mut payload = vec![b'x'; size.max(20)];
    'publishing: while Instant::now() < deadline {
        while sent - delivered >= inflight {
            publisher.flush().await?;
            let left = deadline.saturating_duration_since(Instant::now());
            match hub::transport::timeout(left, delivered_rx.recv()).await {
                Some(Ok(d)) => delivered = d,
                Some(Err(_)) | None => break 'publishing,
            }
            while let Ok(d) = delivered_rx.try_recv() {
                delivered = d;
            }
        }
        if acks.is_finished() {
            acks.await?;
            return Err("MQTT: the publisher's connection ended".into());
        }
        let head = format!("{sent} ");
        payload[..head.len()].copy_from_slice(head.as_bytes());
        publisher.publish(topic, &payload, qos, (sent % 65535 + 1) as u16);
        sent += 1;
        if publisher.out.len() > 1 << 16 {
            publisher.flush().await?;
        }
    }
    publisher.flush().await?;
    let (received, gaps) = receiver.await?;
    drop(acks);
    Ok((received, sent, gaps))
}

#[derive(argh::FromArgs)]
#[argh(subcommand, name = "mqtt-idle")]
/// Open many idle MQTT connections to one broker (CONNECT, SUBSCRIBE one topic each, then
/// nothing but PINGREQ), hold them, and report; the broker's memory is read from outside.
pub struct Idle {
    /// broker (HOST:PORT or unix:PATH)
    #[argh(option)]
    pub connect: String,
    /// connections (default 2000)
    #[argh(option, default = "2000")]
    pub connections: usize,
    /// connections being set up at once (default 64)
    #[argh(option, default = "64")]
    pub parallel: usize,
    /// seconds to hold them after the last SUBACK (default 20)
    #[argh(option, default = "20.0")]
    pub hold: f64,
    /// topic prefix: connection i subscribes to PREFIXi at QoS 1 (default idle/)
    #[argh(option, default = "String::from(\"idle/\")")]
    pub prefix: String,
    /// keep alive announced in CONNECT, in seconds; a PINGREQ goes out on every connection each
    /// half of it (default 60)
    #[argh(option, default = "60")]
    pub keep_alive: u16,
}

/// Opens `i.connections` connections to `i.connect`, at most `i.parallel` in their handshake at
/// once, each with a clean session, client id `hub-bench-idle-{pid}-{n}` and one subscription to
/// `{prefix}{n}` at QoS 1; prints `connected N of M idle MQTT connections in S s; F failed` once
/// all have their SUBACK (or failed), holds them `i.hold` seconds sending only PINGREQ, and
/// prints how many were still open. The first failure's reason is printed too.
pub async fn idle(i: Idle) -> Result<(), String> {
    if i.connections == 0 {
        return Err("--connections is at least 1".into());
    }
    let pid = std::process::id();
    let slots = std::sync::Arc::new(smol::lock::Semaphore::new(i.parallel.max(1)));
    let started = Instant::now();
    let mut setups = Vec::with_capacity(i.connections);
    for n in 0..i.connections {
        let permit = slots.acquire_arc().await;
        let (addr, topic) = (i.connect.clone(), format!("{}{n}", i.prefix));
        let keep_alive = i.keep_alive;
        setups.push(smol::spawn(async move {
            let id = format!("hub-bench-idle-{pid}-{n}");
            let setup = async {
                let mut c = Client::connect_with(&addr, &id, keep_alive, 256).await?;
                c.subscribe(&topic, 1).await?;
                Ok::<_, String>(c)
            };
            let c = hub::transport::timeout(Duration::from_secs(30), setup)
                .await
                .unwrap_or_else(|| Err(format!("connection {n}: no SUBACK within 30 s")));
            drop(permit);
            c
        }));
    }
    let (mut open, mut failed, mut first_error) = (Vec::new(), 0usize, None);
    for s in setups {
        match s.await {
            Ok(c) => open.push(c),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let took = started.elapsed();
    println!(
        "connected {} of {} idle MQTT connections in {:.1} s; {failed} failed{}",
        open.len(),
        i.connections,
        took.as_secs_f64(),
        first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let hold_until = Instant::now() + Duration::from_secs_f64(i.hold.max(0.0));
    let ping_every = Duration::from_secs(u64::from(i.keep_alive.max(2) / 2));
    loop {
        let left = hold_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        smol::Timer::after(left.min(ping_every)).await;
        if i.keep_alive > 0 && Instant::now() < hold_until {
            // PINGRESPs are left unread in the socket: two bytes each.
            let mut alive = Vec::with_capacity(open.len());
            for mut c in open {
                c.out.extend_from_slice(&[0xc0, 0]);
                if c.flush().await.is_ok() {
                    alive.push(c);
                }
            }
            open = alive;
        }
    }
    println!(
        "after {:.0} s idle: {} still open",
        i.hold.max(0.0),
        open.len()
    );
    Ok(())
}
