//! Shutdown on SIGTERM or SIGINT, threaded through every loop as a [`Shutdown`] handle; and
//! SIGHUP for the cloud, which asks it to re-read its credentials ([`hangups`]).

use smol::channel::{Receiver, Sender};
use smol::stream::StreamExt;

/// A handle every long-running loop holds; [`wait`](Shutdown::wait) finishes once shutdown began.
#[derive(Clone, Debug)]
pub struct Shutdown(Receiver<()>);

/// Begins the shutdown when dropped or [`trigger`](Trigger::trigger)ed.
#[derive(Debug)]
pub struct Trigger {
    _sender: Sender<()>,
}

/// A new shutdown handle and its trigger.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = smol::channel::bounded(1);
    (Trigger { _sender: tx }, Shutdown(rx))
}

impl Trigger {
    /// Begins the shutdown.
    pub fn trigger(self) {}
}

impl Shutdown {
    /// Finishes once shutdown began.
    pub async fn wait(&self) {
        let _ = self.0.recv().await;
    }

    /// Whether shutdown began.
    pub fn is_triggered(&self) -> bool {
        self.0.is_closed()
    }
}

/// Triggers the shutdown on the first SIGTERM or SIGINT, logging which arrived.
pub fn on_signals(trigger: Trigger) -> std::io::Result<()> {
    use async_signal::{Signal, Signals};
    let mut signals = Signals::new([Signal::Term, Signal::Int])?;
    smol::spawn(async move {
        if let Some(Ok(sig)) = signals.next().await {
            log::info!("{sig:?} received: shutting down");
        }
        trigger.trigger();
    })
    .detach();
    Ok(())
}

/// SIGHUPs from now on, as a channel that holds at most one (several before the reader looks
/// count as one). Registering takes SIGHUP's default action (terminating the process) away for
/// the rest of the process's life.
///
/// Only the cloud asks for this (`systemctl reload`: re-read `ca`, `cert` and `key`); the edge
/// keeps SIGHUP's default action, since it re-reads its own credentials on its
/// `refresh-ak-sk-interval`.
///
/// Errors: the signal handler cannot be installed.
pub fn hangups() -> std::io::Result<Receiver<()>> {
    use async_signal::{Signal, Signals};
    let mut signals = Signals::new([Signal::Hup])?;
    let (tx, rx) = smol::channel::bounded(1);
    smol::spawn(async move {
        while let Some(Ok(_)) = signals.next().await {
            // Full: one is already waiting. Closed: nobody listens any more, and SIGHUP stays
            // ignored.
            let _ = tx.try_send(());
        }
    })
    .detach();
    Ok(rx)
}
