//! Wake-ups between tasks that carry no data, in a few bytes each.
//!
//! A channel of `()` does the same job, but an `async_channel` costs about 700 bytes however
//! small its capacity (its queue and three events, padded to cache lines), and a cloud keeps
//! several per node for as long as the node is connected. These keep an atomic flag and an
//! [`Event`], whose list of waiters is only allocated while someone waits (about 100 bytes).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use event_listener::Event;

/// A wake-up token for one waiter: [`notify`](Token::notify) leaves a token (at most one; more
/// notifications before it is taken are one), [`wait`](Token::wait) takes it, waiting for one if
/// there is none. What a `bounded(1)` channel of `()` does with `try_send` and `recv`.
#[derive(Default)]
pub struct Token {
    set: AtomicBool,
    event: Event,
}

impl Token {
    /// An empty token.
    pub fn new() -> Token {
        Token::default()
    }

    /// Leaves the token and wakes a waiter.
    pub fn notify(&self) {
        self.set.store(true, Ordering::Release);
        self.event.notify(1);
    }

    /// Takes the token if it is there.
    pub fn take(&self) -> bool {
        self.set.swap(false, Ordering::AcqRel)
    }

    /// Takes the token, waiting until there is one.
    pub async fn wait(&self) {
        loop {
            if self.take() {
                return;
            }
            let listener = self.event.listen();
            if self.take() {
                return;
            }
            listener.await;
        }
    }
}

/// A flag that is raised once and stays up: [`raise`](Latch::raise) wakes every waiter of
/// [`wait`](Latch::wait), now and later. What the closing of a channel of `()` does.
#[derive(Default)]
pub struct Latch {
    up: AtomicBool,
    event: Event,
}

impl Latch {
    /// A latch not raised yet.
    pub fn new() -> Latch {
        Latch::default()
    }

    /// Raises the latch and wakes every waiter.
    pub fn raise(&self) {
        self.up.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }

    /// Whether the latch was raised.
    pub fn is_raised(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Waits until the latch is raised (at once if it was).
    pub async fn wait(&self) {
        loop {
            if self.is_raised() {
                return;
            }
            let listener = self.event.listen();
            if self.is_raised() {
                return;
            }
            listener.await;
        }
    }
}

/// Raises its latch when dropped: whoever holds it signals its end to the latch's waiters,
/// however it ends.
pub struct RaiseOnDrop(pub Arc<Latch>);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.raise();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_token_is_kept_until_taken_and_counts_once() {
        smol::block_on(async {
            let token = Arc::new(Token::new());
            token.notify();
            token.notify();
            token.wait().await; // kept from before
            assert!(!token.take(), "two notifications leave one token");
            let waiter = smol::spawn({
                let token = token.clone();
                async move { token.wait().await }
            });
            smol::Timer::after(Duration::from_millis(20)).await;
            token.notify();
            waiter.await;
            assert!(!token.take());
        });
    }

    #[test]
    fn a_latch_wakes_every_waiter_now_and_later() {
        smol::block_on(async {
            let latch = Arc::new(Latch::new());
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let latch = latch.clone();
                    smol::spawn(async move { latch.wait().await })
                })
                .collect();
            smol::Timer::after(Duration::from_millis(20)).await;
            assert!(!latch.is_raised());
            latch.raise();
            for w in waiters {
                w.await;
            }
            latch.wait().await;
        });
    }
}
