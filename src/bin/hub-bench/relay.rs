//! A relay for reconnect measurements: forwards TCP or UDP from 127.0.0.1 to a target, each way
//! after a fixed delay (half the emulated round trip); SIGUSR1 drops everything from then on
//! (a blackhole: nothing is closed), SIGUSR2 forwards again.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use smol::Async;
use smol::channel::{Receiver, Sender};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::stream::StreamExt;

/// Bytes and when they may go on.
type Delayed = (Instant, Vec<u8>);

/// Runs the relay until the process is killed; prints `relay listening on ADDR` first.
pub async fn run(to: SocketAddr, udp: bool, delay: Duration) -> Result<(), String> {
    let blackhole = Arc::new(AtomicBool::new(false));
    let flag = blackhole.clone();
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Usr1, async_signal::Signal::Usr2])
            .map_err(|e| e.to_string())?;
    smol::spawn(async move {
        while let Some(Ok(sig)) = signals.next().await {
            flag.store(sig == async_signal::Signal::Usr1, Ordering::SeqCst);
        }
    })
    .detach();
    if udp {
        run_udp(to, delay, blackhole).await
    } else {
        run_tcp(to, delay, blackhole).await
    }
}

fn announce(addr: SocketAddr) {
    use std::io::Write;
    println!("relay listening on {addr}");
    let _ = std::io::stdout().flush();
}

/// Delivers `(due, bytes)` items in order, each not before its due time.
fn delayed<F, Fut>(mut deliver: F) -> Sender<Delayed>
where
    F: FnMut(Vec<u8>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let (tx, rx): (Sender<Delayed>, Receiver<Delayed>) = smol::channel::unbounded();
    smol::spawn(async move {
        while let Ok((due, bytes)) = rx.recv().await {
            smol::Timer::at(due).await;
            if !deliver(bytes).await {
                return;
            }
        }
    })
    .detach();
    tx
}

async fn run_tcp(
    to: SocketAddr,
    delay: Duration,
    blackhole: Arc<AtomicBool>,
) -> Result<(), String> {
    let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).map_err(|e| e.to_string())?;
    announce(listener.get_ref().local_addr().map_err(|e| e.to_string())?);
    loop {
        let (client, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let Ok(server) = Async::<TcpStream>::connect(to).await else {
            continue;
        };
        let _ = client.get_ref().set_nodelay(true);
        let _ = server.get_ref().set_nodelay(true);
        let (c, s) = (Arc::new(client), Arc::new(server));
        for (from, into) in [(c.clone(), s.clone()), (s, c)] {
            let blackhole = blackhole.clone();
            let out = delayed(move |bytes: Vec<u8>| {
                let into = into.clone();
                async move { (&*into).write_all(&bytes).await.is_ok() }
            });
            smol::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = (&*from).read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !blackhole.load(Ordering::SeqCst) {
                        let _ = out.try_send((Instant::now() + delay, buf[..n].to_vec()));
                    }
                }
            })
            .detach();
        }
    }
}

async fn run_udp(
    to: SocketAddr,
    delay: Duration,
    blackhole: Arc<AtomicBool>,
) -> Result<(), String> {
    let front = Arc::new(Async::<UdpSocket>::bind(([127, 0, 0, 1], 0)).map_err(|e| e.to_string())?);
    announce(front.get_ref().local_addr().map_err(|e| e.to_string())?);
    let mut upstreams: HashMap<SocketAddr, Sender<Delayed>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = front.recv_from(&mut buf).await.map_err(|e| e.to_string())?;
        if blackhole.load(Ordering::SeqCst) {
            continue;
        }
        let out = match upstreams.get(&client) {
            Some(out) => out.clone(),
            None => {
                let up = Arc::new(
                    Async::<UdpSocket>::bind(([127, 0, 0, 1], 0)).map_err(|e| e.to_string())?,
                );
                up.get_ref().connect(to).map_err(|e| e.to_string())?;
                let sender = up.clone();
                let out = delayed(move |bytes: Vec<u8>| {
                    let sender = sender.clone();
                    async move {
                        let _ = sender.send(&bytes).await;
                        true
                    }
                });
                // Replies go back to the client after the same delay.
                let back_front = front.clone();
                let back = delayed(move |bytes: Vec<u8>| {
                    let f = back_front.clone();
                    async move {
                        let _ = f.send_to(&bytes, client).await;
                        true
                    }
                });
                let bh = blackhole.clone();
                smol::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = up.recv(&mut buf).await {
                        if !bh.load(Ordering::SeqCst) {
                            let _ = back.try_send((Instant::now() + delay, buf[..n].to_vec()));
                        }
                    }
                })
                .detach();
                upstreams.insert(client, out.clone());
                out
            }
        };
        let _ = out.try_send((Instant::now() + delay, buf[..n].to_vec()));
    }
}
