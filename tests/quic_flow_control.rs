//! QUIC flow control on a real cloud: a node may send two bandwidth-delay products ahead on a
//! stream (100 Mbit/s x 200 ms, 2.5 MB, twice: a lost packet holds up its stream for about a round
//! trip while the sender goes on), yet what it sends that the cloud does not read is bounded
//! per stream (docs/protocol.md section 8); streams beyond the protocol's two are refused
//! (tests/hostile_peers.rs).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::apps::block;
use common::{CloudSpec, Proto};
use hub::transport::quic::{RECEIVE_WINDOW, STREAM_RECEIVE_WINDOW};

/// 100 Mbit/s for 200 ms, in bytes: the path the windows must keep full.
const PATH_BDP: usize = 2_500_000;

/// Bytes written to `stream` in 16 KiB writes until one stays blocked for 500 ms (flow control),
/// or `cap` bytes went out.
async fn fill(stream: &mut quinn::SendStream, cap: usize) -> usize {
    let chunk = vec![0x5a; 16 * 1024];
    let mut total = 0;
    while total < cap {
        match hub::transport::timeout(Duration::from_millis(500), stream.write(&chunk)).await {
            Some(Ok(n)) => total += n,
            Some(Err(e)) => panic!("write failed after {total} bytes: {e}"),
            None => break,
        }
    }
    total
}

#[test]
fn unread_data_is_bounded_per_stream_and_per_connection_at_windows_that_fill_a_wan_path() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::link_pki(tmp.path());
    let cloud = common::start_cloud(tmp.path(), &pki, &CloudSpec::default());
    let port = cloud.port(Proto::Quic);
    let tls = hub::tls::client_config(
        &pki.join("ca.crt"),
        &{
            let (crt, key) = hub::pki::node_files("edge-node");
            hub::tls::Credentials::load(&pki.join(crt), &pki.join(key)).unwrap()
        },
        hub::proto::ALPN,
        false,
    )
    .unwrap();
    let config = hub::transport::quic::client_config(tls, Duration::from_secs(60)).unwrap();
    let endpoint = hub::transport::quic::client_endpoint(false).unwrap();
    // The length of a HELLO that never follows: the control stream's first frame never reaches
    // the session, so the cloud reads nothing of the bulk stream (its reader waits for that frame).
    let hello = 100u32.to_be_bytes().to_vec();
    let cloud_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (conn, _control, _recv, _) = block(
        "connect",
        hub::transport::quic::connect(&endpoint, config, cloud_addr, "127.0.0.1", &hello),
    )
    .unwrap();
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let before = rss(cloud.hub.pid());

    // The bulk lane's stream, which the cloud does not read yet, filled until flow control
    // stops it. (A third stream would be a protocol error: the protocol opens two.)
    let stream = STREAM_RECEIVE_WINDOW as usize;
    let connection = RECEIVE_WINDOW as usize;
    let (written, mut streams) = block("fill the bulk stream", async {
        let (mut s, r) = conn.open_bi().await.unwrap();
        s.write_all(&[hub::transport::quic::BULK_PREFACE])
            .await
            .unwrap();
        let written = vec![fill(&mut s, 4 * connection).await];
        (written, vec![(s, r)])
    });
    let total: usize = written.iter().sum();
    let after = rss(cloud.hub.pid());
    eprintln!(
        "written per stream {written:?} (window {stream}, connection {connection}); \
         cloud RSS {before} KiB -> {after} KiB"
    );
    assert!(
        written[0] >= 2 * PATH_BDP,
        "a stream blocked after {} bytes, less than two round trips of a 100 Mbit/s x 200 ms path \
         ({}): a lost packet would stall the path while its retransmission is under way",
        written[0],
        2 * PATH_BDP
    );
    assert!(
        written.iter().all(|w| *w <= stream),
        "a stream took more than its window of {stream} bytes: {written:?}"
    );
    // What the cloud holds for the node is about the window, not what the node tried to send
    // (four times the connection window).
    assert!(
        after < before + 3 * (connection as u64 / 1024),
        "the cloud's memory grew by {} KiB for {} KiB of unread data",
        after.saturating_sub(before),
        total / 1024
    );
    // Still blocked: no credit was granted for data the cloud did not read.
    let more = block("write more", async {
        hub::transport::timeout(Duration::from_millis(500), streams[0].0.write(&[0u8; 1024])).await
    });
    assert!(more.is_none(), "a blocked stream took more data: {more:?}");
    drop(streams);
}
