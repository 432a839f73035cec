//! What the edge adds to the operations endpoint ([`crate::http`]): its outbox at scrape time,
//! and when it is ready.

use std::sync::Arc;

use crate::config::QueueConfig;
use crate::exchange::LaneStores;
use crate::http::Ops;
use crate::metrics::{Exposition, METRICS, PROTOCOLS, Side};
use crate::shutdown::Shutdown;

use super::CredentialStore;

/// The edge's [`Ops`]: the node certificate's expiry, the outbox's messages and bytes. Ready while the link to the cloud is
/// open, or, offline, while the outbox takes messages (below `max-messages` and `max-bytes` on
/// both lanes, and its folder takes writes): applications can hand messages over either way.
pub fn ops(
    outbox: Arc<LaneStores>,
    config: QueueConfig,
    creds: Arc<CredentialStore>,
    shutdown: Shutdown,
) -> Ops {
    let gathered = outbox.clone();
    let gather = move |e: &mut Exposition| {
        let not_after = creds.current().1.validity().map(|v| v.not_after);
        crate::metrics::certificate_expiry(e, not_after);
        e.queues(
            gathered.out.each_ref().map(|q| q.len()),
            gathered.out.each_ref().map(|q| q.bytes()),
            "Messages in the outbox not yet acknowledged by the cloud, by lane.",
        );
    };
    let ready = move || {
        if shutdown.is_triggered() {
            return Err("shutting down".to_owned());
        }
        if let Some(i) = METRICS.link_up.iter().position(|g| g.get() > 0) {
            return Ok(format!(
                "the link to the cloud is open over {}",
                PROTOCOLS[i]
            ));
        }
        for q in &outbox.out {
            if q.len() >= config.max_messages || q.bytes() >= config.max_bytes {
                return Err(format!(
                    "offline, and the outbox is full ({} messages, {} bytes)",
                    q.len(),
                    q.bytes()
                ));
            }
        }
        crate::queue::writable(&config.dir)?;
        Ok(format!(
            "offline; the outbox takes messages ({} queued)",
            outbox.len()
        ))
    };
    Ops {
        side: Side::Edge,
        gather: Box::new(gather),
        ready: Box::new(ready),
    }
}
