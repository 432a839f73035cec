//! Shutdown on SIGTERM or SIGINT, threaded through every loop as a [`Shutdown`] handle.

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
