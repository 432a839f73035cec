//! Local delivery: the applications connected to this hub, their subscriptions, and the sync
//! requests they are waiting on.
//!
//! A message arriving from the other side goes to the one application waiting for it (a response:
//! its `parent_msg_id` names a pending request), or else to every subscription it matches (group
//! equal, resource starting with the prefix). A message nobody takes is counted; a sync request
//! nobody takes is answered with an error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use smol::channel::Sender;

use crate::message::Message;

/// What a subscription selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `route.group` must equal this, when given.
    pub group: Option<String>,
    /// `route.resource` must start with this, when given.
    pub resource: Option<String>,
}

impl Filter {
    /// Whether `msg` is selected.
    pub fn matches(&self, msg: &Message) -> bool {
        self.group.as_ref().is_none_or(|g| *g == msg.group)
            && self
                .resource
                .as_ref()
                .is_none_or(|p| msg.resource.starts_with(p.as_str()))
    }
}

/// A connected application: where to send it JSON text.
pub type AppSender = Sender<String>;

struct Subscription {
    id: u64,
    filter: Filter,
    app: AppSender,
}

/// The applications of one hub.
pub struct Local {
    subscriptions: Mutex<Vec<Subscription>>,
    pending: Mutex<HashMap<String, AppSender>>,
    next_id: AtomicU64,
    unroutable: AtomicU64,
    /// How long a sync request waits for its answer.
    pub request_timeout: Duration,
}

/// The outcome of [`Local::deliver`].
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Given to this many applications (a response: to the one that asked).
    Delivered(usize),
    /// No application took it; counted.
    Dropped,
    /// No application took this sync request: send this error back to where it came from.
    Refused(Message),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Local {
    /// No applications yet.
    pub fn new(request_timeout: Duration) -> Local {
        Local {
            subscriptions: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            unroutable: AtomicU64::new(0),
            request_timeout,
        }
    }

    /// Adds a subscription; returns its id for [`unsubscribe`](Self::unsubscribe).
    pub fn subscribe(&self, filter: Filter, app: AppSender) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.subscriptions).push(Subscription { id, filter, app });
        id
    }

    /// Removes a subscription.
    pub fn unsubscribe(&self, id: u64) {
        lock(&self.subscriptions).retain(|s| s.id != id);
    }

    /// Records that `app` waits for the answer to request `msg_id`; after the request timeout it
    /// gets an error instead. `about` is the request, for the error's route.
    pub fn await_response(self: &std::sync::Arc<Self>, about: &Message, app: AppSender) {
        lock(&self.pending).insert(about.id.clone(), app);
        let local = std::sync::Arc::downgrade(self);
        let about = Message {
            content: Vec::new(),
            ..about.clone()
        };
        let timeout = self.request_timeout;
        smol::spawn(async move {
            smol::Timer::after(timeout).await;
            let Some(local) = local.upgrade() else { return };
            let waiting = lock(&local.pending).remove(&about.id);
            if let Some(app) = waiting {
                let why = format!("no response within {:.1}s", timeout.as_secs_f64());
                let _ = app.try_send(Message::notice(&about, "error", Some(&why)).to_json());
            }
        })
        .detach();
    }

    /// Forgets the requests `app` was waiting on (it disconnected).
    pub fn forget(&self, app: &AppSender) {
        lock(&self.pending).retain(|_, a| !a.same_channel(app));
    }

    /// Hands a message from the other side to the applications it is for.
    pub fn deliver(&self, msg: &Message) -> Delivery {
        if !msg.parent_id.is_empty() {
            let waiting = lock(&self.pending).remove(&msg.parent_id);
            if let Some(app) = waiting {
                return match app.try_send(msg.to_json()) {
                    Ok(()) => Delivery::Delivered(1),
                    Err(_) => {
                        self.unroutable.fetch_add(1, Ordering::Relaxed);
                        Delivery::Dropped
                    }
                };
            }
        }
        let mut json = None;
        let mut delivered = 0;
        let mut slow = Vec::new();
        for sub in lock(&self.subscriptions).iter() {
            if !sub.filter.matches(msg) {
                continue;
            }
            let text = json.get_or_insert_with(|| msg.to_json()).clone();
            match sub.app.try_send(text) {
                Ok(()) => delivered += 1,
                Err(_) => slow.push(sub.id),
            }
        }
        if !slow.is_empty() {
            // An application that cannot keep up is disconnected rather than allowed to hold the
            // link back; its connection ends when its channel closes.
            let mut subs = lock(&self.subscriptions);
            for s in subs.iter().filter(|s| slow.contains(&s.id)) {
                log::warn!(
                    "an application fell {} messages behind; disconnecting it",
                    s.app.len()
                );
                s.app.close();
            }
            subs.retain(|s| !slow.contains(&s.id));
        }
        if delivered > 0 {
            return Delivery::Delivered(delivered);
        }
        let n = self.unroutable.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 || n.is_power_of_two() {
            log::info!(
                "no application subscribed to group {:?} resource {:?} ({n} such message(s) so far)",
                msg.group,
                msg.resource
            );
        }
        if msg.sync {
            let why = format!("no application subscribed to {}", msg.resource);
            return Delivery::Refused(Message::notice(msg, "error", Some(&why)));
        }
        Delivery::Dropped
    }

    /// Messages no application took so far.
    pub fn unroutable(&self) -> u64 {
        self.unroutable.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(group: &str, resource: &str) -> Message {
        Message {
            id: crate::message::new_id(),
            group: group.into(),
            resource: resource.into(),
            content: b"1".to_vec(),
            ..Message::default()
        }
    }

    #[test]
    fn filters_route_and_responses_go_to_the_asker_only() {
        let local = std::sync::Arc::new(Local::new(Duration::from_secs(30)));
        let (a, a_rx) = smol::channel::bounded(16);
        let (b, b_rx) = smol::channel::bounded(16);
        local.subscribe(
            Filter {
                group: Some("g".into()),
                resource: Some("node/n1/".into()),
            },
            a.clone(),
        );
        let sub_b = local.subscribe(Filter::default(), b.clone());

        assert_eq!(
            local.deliver(&msg("g", "node/n1/x")),
            Delivery::Delivered(2)
        );
        assert_eq!(
            local.deliver(&msg("h", "node/n1/x")),
            Delivery::Delivered(1)
        );
        assert_eq!((a_rx.len(), b_rx.len()), (1, 2));

        let request = msg("g", "node/n1/q");
        local.await_response(&request, a.clone());
        let mut response = msg("g", "node/n1/q");
        response.parent_id = request.id.clone();
        assert_eq!(local.deliver(&response), Delivery::Delivered(1));
        assert_eq!(
            (a_rx.len(), b_rx.len()),
            (2, 2),
            "only the asker gets the response"
        );

        local.unsubscribe(sub_b);
        let mut lonely = msg("h", "other");
        assert_eq!(local.deliver(&lonely), Delivery::Dropped);
        lonely.sync = true;
        match local.deliver(&lonely) {
            Delivery::Refused(err) => {
                assert_eq!(
                    (err.parent_id.as_str(), err.operation.as_str()),
                    (lonely.id.as_str(), "error")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(local.unroutable(), 2);
    }

    #[test]
    fn unanswered_requests_time_out_with_an_error() {
        let local = std::sync::Arc::new(Local::new(Duration::from_millis(50)));
        let (a, a_rx) = smol::channel::bounded(16);
        let request = msg("g", "r");
        local.await_response(&request, a);
        let text = smol::block_on(a_rx.recv()).unwrap();
        let notice = Message::from_json(&text).unwrap();
        assert_eq!(
            (notice.parent_id, notice.operation),
            (request.id, "error".to_owned())
        );
        assert!(
            String::from_utf8(notice.content)
                .unwrap()
                .contains("no response within")
        );
    }

    #[test]
    fn a_slow_application_is_cut_off() {
        let local = Local::new(Duration::from_secs(1));
        let (a, a_rx) = smol::channel::bounded(2);
        local.subscribe(Filter::default(), a);
        for _ in 0..2 {
            assert_eq!(local.deliver(&msg("g", "r")), Delivery::Delivered(1));
        }
        assert_eq!(local.deliver(&msg("g", "r")), Delivery::Dropped);
        assert!(a_rx.is_closed());
    }
}
