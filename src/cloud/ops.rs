//! What the cloud adds to the operations endpoint ([`crate::http`]): its queues at scrape time,
//! and when it is ready.

use std::sync::Arc;

use crate::http::Ops;
use crate::metrics::{Exposition, Side};
use crate::proto::frame::{LANES, Lane};
use crate::shutdown::Shutdown;

use super::credentials::CloudTls;
use super::{NodeQueues, Registry};
use crate::config::CloudConfig;

/// The cloud's [`Ops`]: the serving certificate's expiry, queue totals (and, with `per_node`,
/// each node's queue and link round trip), the node limit;
/// ready while not shutting down and `queues.dir` takes writes.
pub fn ops(
    config: &CloudConfig,
    registry: Arc<Registry>,
    queues: Arc<NodeQueues>,
    served: Arc<CloudTls>,
    shutdown: Shutdown,
) -> Ops {
    let per_node = config.metrics.per_node;
    let dir = config.queues.dir.clone();
    let gather = move |e: &mut Exposition| {
        crate::metrics::certificate_expiry(e, served.not_after());
        e.gauge(
            "hub_node_limit",
            "The most nodes the cloud admits at once (node-limit).",
            registry.limit(),
        );
        let mut messages = [0u64; LANES];
        let mut bytes = [0u64; LANES];
        let mut nodes: Vec<(String, [u64; LANES], [u64; LANES])> = Vec::new();
        queues.each(|id, stores| {
            let m = stores.out.each_ref().map(|q| q.len());
            let b = stores.out.each_ref().map(|q| q.bytes());
            for l in 0..LANES {
                messages[l] += m[l];
                bytes[l] += b[l];
            }
            if per_node {
                nodes.push((id.to_owned(), m, b));
            }
        });
        e.queues(
            messages,
            bytes,
            "Messages queued for nodes and not yet acknowledged by them, by lane.",
        );
        if per_node {
            nodes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            e.family(
                "hub_node_queue_messages",
                "gauge",
                "Messages queued for one node and not yet acknowledged, by lane.",
            );
            for (id, m, _) in &nodes {
                for l in Lane::ALL {
                    let labels = [("node", id.as_str()), ("lane", l.name())];
                    e.sample("hub_node_queue_messages", &labels, m[l.index()]);
                }
            }
            e.family(
                "hub_node_queue_bytes",
                "gauge",
                "Bytes of one node's queue files on disk, by lane.",
            );
            for (id, _, b) in &nodes {
                for l in Lane::ALL {
                    let labels = [("node", id.as_str()), ("lane", l.name())];
                    e.sample("hub_node_queue_bytes", &labels, b[l.index()]);
                }
            }
            e.family(
                "hub_node_link_rtt_seconds",
                "gauge",
                "The last round-trip sample of one connected node's link.",
            );
            for n in registry.nodes() {
                if let Some(rtt) = n.live.rtt() {
                    let labels = [("node", n.node_id.as_str())];
                    e.sample("hub_node_link_rtt_seconds", &labels, rtt.as_secs_f64());
                }
            }
        }
    };
    let ready = move || {
        if shutdown.is_triggered() {
            return Err("shutting down".to_owned());
        }
        crate::queue::writable(&dir)?;
        Ok("listening, and the queues take writes".to_owned())
    };
    Ops {
        side: Side::Cloud,
        gather: Box::new(gather),
        ready: Box::new(ready),
    }
}
