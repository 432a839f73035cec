//! What one read of a hub's state costs the hub: repeated `GET /metrics` of the operations
//! endpoint, or repeated `/nodes` requests of the application endpoint (what `hub nodes`
//! fetches), one after the other, each on a fresh connection like a Prometheus scrape or a
//! `hub nodes` run; the hub's CPU time meanwhile, from the kernel's per-thread run times.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use argh::FromArgs;
use async_tungstenite::tungstenite::Message as WsMessage;
use hub::client;
use smol::Async;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::stream::StreamExt;

#[derive(FromArgs)]
#[argh(subcommand, name = "scrape")]
/// Scrape a hub's /metrics (or ask a cloud's /nodes) repeatedly; per request: response size,
/// wall time, and the hub's CPU time.
pub struct Scrape {
    /// the operations endpoint to GET /metrics from (HOST:PORT)
    #[argh(option)]
    pub metrics: Option<String>,
    /// instead, the cloud's application endpoint to ask /nodes at (ws://HOST:PORT)
    #[argh(option)]
    pub nodes: Option<String>,
    /// the hub's process id, whose CPU time is read from /proc
    #[argh(option)]
    pub pid: u32,
    /// requests (default 50)
    #[argh(option, default = "50")]
    pub count: usize,
    /// seconds between requests (default 0.2)
    #[argh(option, default = "0.2")]
    pub interval: f64,
    /// seconds to measure the hub's CPU time without requests first, the background (default 2)
    #[argh(option, default = "2.0")]
    pub idle: f64,
}

/// CPU time each thread of `pid` has run, in nanoseconds (field 1 of
/// `/proc/PID/task/TID/schedstat`, sched-stats.rst). `/proc/PID/schedstat` alone is the main
/// thread's.
fn run_times(pid: u32) -> Result<HashMap<u32, u64>, String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {dir}: {e}"))?;
    let mut times = HashMap::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread that ended since the listing has no file any more: it is simply left out.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = stat.split_whitespace().next().and_then(|v| v.parse().ok()) {
            times.insert(tid, ns);
        }
    }
    Ok(times)
}

/// Nanoseconds of CPU the threads of `after` ran since `before`; and how many threads of
/// `before` ended meanwhile (whose last run time is lost).
fn ran(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> (u64, usize) {
    let ns = after
        .iter()
        .map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum();
    let ended = before.keys().filter(|t| !after.contains_key(t)).count();
    (ns, ended)
}

/// `GET /metrics` on a fresh connection; the body's length.
async fn get_metrics(addr: &str) -> Result<usize, String> {
    let to: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = Async::<TcpStream>::connect(to)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{addr}: no complete HTTP response"))?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    if !head.starts_with("HTTP/1.1 200 ") {
        let status = head.lines().next().unwrap_or("");
        return Err(format!("{addr}: GET /metrics answered {status}"));
    }
    Ok(response.len() - head_end - 4)
}

/// The `/nodes` answer on a fresh connection, as `hub nodes` asks it; its length.
async fn get_nodes(url: &str) -> Result<usize, String> {
    let mut ws = client::connect(url, "/nodes").await?;
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => return Ok(t.len()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("{url}: {e}")),
            None => return Err(format!("{url}: closed without a node list")),
        }
    }
}

/// Measures and prints one line: `N requests of PATH: B bytes each (or at most, and at least),
/// wall p50 X ms, max Y ms; CPU Z ms per request, W ms of it the idle background`.
///
/// The hub's CPU time is read just before and just after each request, so the pause between
/// requests (`--interval`, which lets the hub's caches go cold like between a Prometheus
/// server's scrapes) does not count; what the hub does meanwhile for its nodes does, and the
/// idle background is its rate without requests times the requests' wall time.
pub async fn run(s: Scrape) -> Result<(), String> {
    let count = s.count.max(1);
    let path = match (&s.metrics, &s.nodes) {
        (Some(_), None) => "/metrics",
        (None, Some(_)) => "/nodes",
        _ => return Err("give one of --metrics and --nodes".to_owned()),
    };
    // The background: what the hub spends with no request (heartbeats of its nodes, timers).
    let idle = Duration::from_secs_f64(s.idle.max(0.0));
    let mut idle_rate = 0.0; // nanoseconds of CPU per second
    if !idle.is_zero() {
        let t0 = run_times(s.pid)?;
        let started = Instant::now();
        smol::Timer::after(idle).await;
        let t1 = run_times(s.pid)?;
        idle_rate = ran(&t0, &t1).0 as f64 / started.elapsed().as_secs_f64();
    }
    let interval = Duration::from_secs_f64(s.interval.max(0.0));
    let mut sizes = Vec::with_capacity(count);
    let mut walls = Vec::with_capacity(count);
    let (mut ns, mut ended) = (0u64, 0usize);
    for i in 0..count {
        if i > 0 && !interval.is_zero() {
            smol::Timer::after(interval).await;
        }
        let before = run_times(s.pid)?;
        let t = Instant::now();
        let size = match (&s.metrics, &s.nodes) {
            (Some(addr), _) => get_metrics(addr).await?,
            (_, Some(url)) => get_nodes(url).await?,
            _ => unreachable!("checked above"),
        };
        walls.push(t.elapsed());
        let (n, e) = ran(&before, &run_times(s.pid)?);
        ns += n;
        ended += e;
        sizes.push(size);
    }
    if ended > 0 {
        eprintln!("hub-bench: {ended} thread(s) of the hub ended meanwhile: their CPU is missing");
    }
    let background = idle_rate * walls.iter().map(Duration::as_secs_f64).sum::<f64>();
    walls.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (min, max) = (
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    );
    let size = if min == max {
        format!("{max} bytes each")
    } else {
        format!("{max} bytes at most ({min} at least)")
    };
    println!(
        "{count} requests of {path}: {size}, wall p50 {:.2} ms, max {:.2} ms; CPU {:.2} ms per request, {:.2} ms of it the idle background",
        ms(walls[count / 2]),
        ms(walls[count - 1]),
        ns as f64 / 1e6 / count as f64,
        background / 1e6 / count as f64,
    );
    Ok(())
}
