//! Node-to-cloud messages in JetStream (docs/cluster.md sections 5 and 6): one stream,
//! `HUB_UP`, with a subject per node and lane, `hub.up.{node key}.{u|b}`. The instance holding
//! a node stores what the node sends there before the link acknowledges it, in batches framed
//! as `HUB_DOWN`'s are, each with `Nats-Expected-Last-Subject-Sequence` so that a lane never
//! has a gap; every instance reads the stream in order and hands each message to its own
//! applications.

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

/// Creates or opens [`UP_STREAM`]: file storage, `replicas`, messages kept [`KEEP_FOR`], direct
/// get.
pub(super) async fn stream(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<jetstream::stream::Stream, String> {
    let config = jetstream::stream::Config {
        name: UP_STREAM.into(),
        description: Some("hub: what the nodes sent, one subject per node and lane".into()),
        subjects: vec!["hub.up.>".into()],
        max_age: KEEP_FOR,
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

/// The headers of a JetStream message holding `count` records of the node's stream `stream`,
/// numbered from `seq`, stored only if the lane's last message is JetStream
/// sequence `last_js` (0: none).
pub(super) fn headers(stream: u64, seq: u64, count: usize, last_js: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HUB_STREAM, stream.to_string().as_str());
    headers.insert(super::down::HUB_SEQ, seq.to_string().as_str());
    if count > 1 {
        headers.insert(super::down::HUB_COUNT, count.to_string().as_str());
    }
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        last_js.to_string().as_str(),
    );
    headers
}

/// The last message of `node_id`'s `lane` that `HUB_UP` holds: (its stream, the sequence
/// number of its last record, its JetStream sequence), (0, 0, 0) for none. The receive
/// position a link resumes from.
pub(super) async fn position(
    cluster: &Cluster,
    node_id: &str,
    lane: Lane,
) -> Result<(u64, u64, u64), String> {
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
            Ok((stream, super::down::last_hub_seq(&m.headers)?, m.sequence))
        }
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok((0, 0, 0)),
        Err(e) => Err(format!("NATS: {e}")),
    }
}

/// Hands every message stored in `HUB_UP` from now on to `local`, in the stream's order, each
/// once: an ordered consumer (no state on the server beyond an ephemeral consumer), made again
/// from the next sequence number when it fails.
///
/// The client makes an ordered consumer again by itself when it misses a message or its
/// connection, from the last sequence it saw, or from the stream's start when it saw none yet
/// (async-nats 0.46). So the sequence delivered last is kept here, and a message at or below
/// it (such a replay) is not delivered again: the consumer is made anew after it.
pub(super) async fn feed(cluster: Arc<Cluster>, local: Arc<Local>) {
    let mut delivered = loop {
        match cluster.up.clone().info().await {
            Ok(info) => break info.state.last_sequence,
            Err(e) => {
                log::warn!("cluster: cannot read {UP_STREAM}: {e}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    loop {
        let config = push::OrderedConfig {
            deliver_subject: cluster.js.client().new_inbox(),
            filter_subject: "hub.up.>".into(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: delivered + 1,
            },
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
            let Ok(sequence) = m.info().map(|i| i.stream_sequence) else {
                continue;
            };
            if sequence <= delivered {
                log::debug!(
                    "cluster: {UP_STREAM} read again from {sequence}; reading on after {delivered}"
                );
                break;
            }
            delivered = sequence;
            deliver(&local, &m);
        }
    }
}

/// Hands the records of one stored message, from subject `hub.up.{key}.{lane}`, to `local`
/// under `node/{node-id}/`; then makes durable what durable sessions were given, once for the
/// whole batch.
fn deliver(local: &Local, m: &jetstream::Message) {
    let subject = m.subject.as_str();
    let records = m
        .headers
        .as_ref()
        .ok_or_else(|| "no headers".to_owned())
        .and_then(|h| super::down::records(h, &m.payload));
    let (Some(key), Ok(records)) = (subject.split('.').nth(2), records) else {
        log::warn!("cluster: an unreadable message in {UP_STREAM} ({subject})");
        return;
    };
    let prefix = node_prefix(&key_node(key));
    for (seq, record) in records {
        match MessageView::decode(&record, &prefix) {
            // A request no application here takes is not answered from here: an application
            // on another instance may take it.
            Ok(view) => {
                let _ = local.deliver_view(view);
            }
            Err(e) => {
                log::warn!("cluster: an unreadable message in {UP_STREAM} ({subject}, {seq}): {e}")
            }
        }
    }
    local.sync_durable();
}
