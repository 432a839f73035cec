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

/// A queue from tasks to tasks without bound (its senders bound what they put in), holding
/// what waits in a `VecDeque` that grows as items arrive and gives back what a burst took once
/// it is empty again: an idle queue costs about 100 bytes. (An `async_channel` costs about 700
/// bytes before its first item, and keeps a block of 31 slots from its first item on.)
///
/// [`pipe`] makes one; [`PipeSender::send`] fails once every receiver is gone, and
/// [`PipeReceiver::recv`] once every sender is gone and the queue is empty.
pub struct Pipe<T> {
    state: std::sync::Mutex<PipeState<T>>,
    event: Event,
}

struct PipeState<T> {
    items: std::collections::VecDeque<T>,
    senders: usize,
    receivers: usize,
}

/// Capacity an empty [`Pipe`] keeps; beyond it, what a burst took is given back.
const PIPE_KEEP: usize = 8;

impl<T> Pipe<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, PipeState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new empty [`Pipe`]: its sending and receiving ends (each can be cloned).
pub fn pipe<T>() -> (PipeSender<T>, PipeReceiver<T>) {
    let pipe = Arc::new(Pipe {
        state: std::sync::Mutex::new(PipeState {
            items: std::collections::VecDeque::new(),
            senders: 1,
            receivers: 1,
        }),
        event: Event::new(),
    });
    (PipeSender(pipe.clone()), PipeReceiver(pipe))
}

/// The sending end of a [`Pipe`].
pub struct PipeSender<T>(Arc<Pipe<T>>);

/// The receiving end of a [`Pipe`].
pub struct PipeReceiver<T>(Arc<Pipe<T>>);

impl<T> PipeSender<T> {
    /// Queues `item`; gives it back when every receiver is gone.
    pub fn send(&self, item: T) -> Result<(), T> {
        {
            let mut state = self.0.lock();
            if state.receivers == 0 {
                return Err(item);
            }
            state.items.push_back(item);
        }
        self.0.event.notify(usize::MAX);
        Ok(())
    }
}

impl<T> PipeReceiver<T> {
    /// The next item if one is waiting; `Err(true)` when none is and every sender is gone,
    /// `Err(false)` when none is yet.
    pub fn try_recv(&self) -> Result<T, bool> {
        let mut state = self.0.lock();
        match state.items.pop_front() {
            Some(item) => {
                if state.items.is_empty() && state.items.capacity() > PIPE_KEEP {
                    state.items.shrink_to(PIPE_KEEP);
                }
                Ok(item)
            }
            None => Err(state.senders == 0),
        }
    }

    /// The next item, waiting for one; `None` once every sender is gone and none is left.
    pub async fn recv(&self) -> Option<T> {
        loop {
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(true) => return None,
                Err(false) => {}
            }
            let listener = self.0.event.listen();
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(true) => return None,
                Err(false) => {}
            }
            listener.await;
        }
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.0.lock().items.len()
    }

    /// Whether no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Clone for PipeSender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        PipeSender(self.0.clone())
    }
}

impl<T> Clone for PipeReceiver<T> {
    fn clone(&self) -> Self {
        self.0.lock().receivers += 1;
        PipeReceiver(self.0.clone())
    }
}

impl<T> Drop for PipeSender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.0.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.0.event.notify(usize::MAX);
        }
    }
}

impl<T> Drop for PipeReceiver<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receivers -= 1;
        if state.receivers == 0 {
            // Nobody will take them: freed now, not with the last sender.
            state.items = std::collections::VecDeque::new();
        }
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
    fn a_pipe_carries_items_in_order_and_ends_with_its_senders() {
        smol::block_on(async {
            let (tx, rx) = pipe::<u32>();
            let tx2 = tx.clone();
            let reader = smol::spawn({
                let rx = rx.clone();
                async move {
                    let mut got = Vec::new();
                    while let Some(n) = rx.recv().await {
                        got.push(n);
                    }
                    got
                }
            });
            for n in 0..1000 {
                tx.send(n).unwrap();
            }
            drop(tx);
            tx2.send(1000).unwrap();
            drop(tx2);
            assert_eq!(reader.await, (0..=1000).collect::<Vec<_>>());
            assert_eq!(rx.try_recv(), Err(true), "ended");
            // A burst's room is given back once the queue is empty.
            let (tx, rx) = pipe::<u32>();
            for n in 0..1000 {
                tx.send(n).unwrap();
            }
            assert_eq!(rx.len(), 1000);
            while rx.try_recv().is_ok() {}
            assert!(rx.0.lock().items.capacity() <= PIPE_KEEP);
            assert_eq!(rx.try_recv(), Err(false), "empty, not ended");
            drop(rx);
            assert_eq!(tx.send(1), Err(1), "no receiver");
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
