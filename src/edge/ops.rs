//! What the edge adds to the operations endpoint ([`crate::http`]): its outbox at scrape time,
//! and when it is ready.

use std::sync::Arc;

use crate::config::QueueConfig;
use crate::exchange::LaneStores;
use crate::http::Ops;
use crate::metrics::{Exposition, METRICS, PROTOCOLS, Side};
use crate::shutdown::Shutdown;

use super::CredentialStore;

/// The edge's [`Ops`]: the node certificate's expiry, the outbox's messages and bytes. Ready
/// while the outbox takes messages (below `max-messages` and `max-bytes` on both lanes, and its
/// folder takes writes), link or no link: every message of the applications goes through the
/// outbox, so an edge whose outbox cannot take one is not ready even with the link open, and an
/// offline edge whose outbox can is ready. The answer names the link's state.
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
        let link = match METRICS.link_up.iter().position(|g| g.get() > 0) {
            Some(i) => format!("the link to the cloud is open over {}", PROTOCOLS[i]),
            None => "offline".to_owned(),
        };
        for q in &outbox.out {
            if q.len() >= config.max_messages || q.bytes() >= config.max_bytes {
                return Err(format!(
                    "{link}, and the outbox is full ({} messages, {} bytes)",
                    q.len(),
                    q.bytes()
                ));
            }
        }
        crate::queue::writable(&config.dir).map_err(|e| format!("{link}, and {e}"))?;
        Ok(format!(
            "{link}; the outbox takes messages ({} queued)",
            outbox.len()
        ))
    };
    Ops {
        side: Side::Edge,
        gather: Box::new(gather),
        ready: Box::new(ready),
    }
}
