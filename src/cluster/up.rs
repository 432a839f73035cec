//! Node-to-cloud messages in JetStream (docs/cluster.md sections 5 and 6): one stream,
//! `HUB_UP`, with a subject per node and lane, `hub.up.{node key}.{u|b}`. The instance holding
//! a node stores each message the node sends there before the link acknowledges it; every
//! instance reads the stream in order and hands each message to its own applications.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push};
use futures_util::StreamExt;

use super::nats::Cluster;
use super::{UP_STREAM, key_node, node_key};
use crate::local::Local;
use crate::message::{MessageView, node_prefix};
use crate::proto::frame::Lane;

/// The header with the id of the node's stream a message was sent in (the link's `up_stream`).
pub const HUB_STREAM: &str = "Hub-Stream";

/// How long `HUB_UP` keeps a message: long enough for an instance that was away to catch up,
/// short enough that the stream does not grow for ever (every application got it long before).
const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);

/// How long JetStream remembers a `Nats-Msg-Id`: a message sent again after a failover within
/// this time is recognised and not stored twice.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// Creates or opens [`UP_STREAM`]: file storage, `replicas`, messages kept [`KEEP_FOR`],
/// de-duplication by `Nats-Msg-Id` over [`DUPLICATE_WINDOW`], direct get.
pub(super) async fn stream(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<jetstream::stream::Stream, String> {
    let config = jetstream::stream::Config {
        name: UP_STREAM.into(),
        description: Some("hub: what the nodes sent, one subject per node and lane".into()),
        subjects: vec!["hub.up.>".into()],
        max_age: KEEP_FOR,
        duplicate_window: DUPLICATE_WINDOW,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        allow_direct: true,
        ..Default::default()
    };
    super::nats::open_stream(js, config)
        .await
        .map_err(|e| format!("cannot create the JetStream stream {UP_STREAM}: {e}"))
}

/// The subject of `node_id`'s messages on `lane`.
pub(super) fn subject(node_id: &str, lane: Lane) -> String {
    format!(
        "hub.up.{}.{}",
        node_key(node_id),
        super::down::lane_token(lane)
    )
}

/// The headers of message `seq` of stream `stream` from `node_id` on `lane`: its place in the
/// node's stream, and the id JetStream recognises a repeat by.
pub(super) fn headers(node_id: &str, lane: Lane, stream: u64, seq: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HUB_STREAM, stream.to_string().as_str());
    headers.insert(super::down::HUB_SEQ, seq.to_string().as_str());
    let token = super::down::lane_token(lane);
    headers.insert(
        "Nats-Msg-Id",
        format!("{node_id}:{token}:{stream}:{seq}").as_str(),
    );
    headers
}

/// The last message of `node_id`'s `lane` that `HUB_UP` holds: (its stream, its sequence
/// number), (0, 0) for none. The receive position a link resumes from.
pub(super) async fn position(
    cluster: &Cluster,
    node_id: &str,
    lane: Lane,
) -> Result<(u64, u64), String> {
    use jetstream::stream::DirectGetErrorKind;
    match cluster
        .up
        .direct_get_last_for_subject(subject(node_id, lane))
        .await
    {
        Ok(m) => {
            let stream = m
                .headers
                .get(HUB_STREAM)
                .and_then(|v| v.as_str().parse().ok())
                .ok_or_else(|| format!("a message without a readable {HUB_STREAM} header"))?;
            Ok((stream, super::down::hub_seq(&m.headers)?))
        }
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok((0, 0)),
        Err(e) => Err(format!("NATS: {e}")),
    }
}

/// Hands every message stored in `HUB_UP` from now on to `local`, in the stream's order, each
/// once: an ordered consumer (no state on the server beyond an ephemeral consumer), made again
/// from the next sequence number when it fails.
pub(super) async fn feed(cluster: Arc<Cluster>, local: Arc<Local>) {
    let mut start = DeliverPolicy::New;
    loop {
        let config = push::OrderedConfig {
            deliver_subject: cluster.js.client().new_inbox(),
            filter_subject: "hub.up.>".into(),
            deliver_policy: start,
            ..Default::default()
        };
        let messages = match cluster.up.create_consumer(config).await {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                log::warn!("cluster: cannot read {UP_STREAM}: {e}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(next) = messages.next().await {
            let m = match next {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("cluster: reading {UP_STREAM}: {e}; reading again");
                    break;
                }
            };
            if let Ok(info) = m.info() {
                start = DeliverPolicy::ByStartSequence {
                    start_sequence: info.stream_sequence + 1,
                };
            }
            deliver(&local, m.subject.as_str(), &m.payload);
        }
    }
}

/// Hands one stored message, from subject `hub.up.{key}.{lane}`, to `local` under
/// `node/{node-id}/`.
fn deliver(local: &Local, subject: &str, payload: &[u8]) {
    let Some(key) = subject.split('.').nth(2) else {
        return;
    };
    let prefix = node_prefix(&key_node(key));
    match MessageView::decode(payload, &prefix) {
        // A request no application here takes is not answered from here: an application on
        // another instance may take it.
        Ok(view) => {
            let _ = local.deliver_view(view);
            local.sync_durable();
        }
        Err(e) => log::warn!("cluster: an unreadable message in {UP_STREAM} ({subject}): {e}"),
    }
}
