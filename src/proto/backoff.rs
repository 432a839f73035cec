//! Reconnect backoff: exponential, capped, with jitter, reset after a stable period.
//!
//! Delays grow `initial, 2×, 4×, …` up to `max`; each actual wait is drawn uniformly from the
//! upper half of the current step ("equal jitter"), so a fleet of gateways that lost the cloud
//! together does not come back in lockstep, while no wait is shorter than half the step.

use std::time::Duration;

/// Reconnect delay state for one connector.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
    rng: u64,
}

impl Backoff {
    /// A backoff from `initial` up to `max`; `seed` drives the jitter (any value; 0 is replaced).
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            step: initial,
            rng: seed | 1,
        }
    }

    /// The wait before the next attempt; each call doubles the step up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let frac = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(frac)
    }

    /// Records that a link stayed up for `uptime`: once it was up for at least the cap, the link
    /// counts as stable and the next failure starts again from `initial`.
    pub fn link_was_up(&mut self, uptime: Duration) {
        if uptime >= self.max {
            self.step = self.initial;
        }
    }

    /// The largest wait this backoff ever returns.
    pub fn cap(&self) -> Duration {
        self.max
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for jitter.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn grows_capped_with_jitter_and_resets() {
        let mut b = Backoff::new(S, 8 * S, 42);
        let steps = [1, 2, 4, 8, 8, 8].map(|n| n * S);
        for step in steps {
            let d = b.next_delay();
            assert!(d >= step / 2 && d <= step, "{d:?} for step {step:?}");
        }
        b.link_was_up(3 * S);
        assert!(b.next_delay() >= 4 * S, "a short link does not reset");
        b.link_was_up(8 * S);
        assert!(b.next_delay() <= S, "a stable link resets");
    }

    #[test]
    fn jitter_spreads() {
        let mut a = Backoff::new(10 * S, 10 * S, 1);
        let mut b = Backoff::new(10 * S, 10 * S, 2);
        let da: Vec<_> = (0..8).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert_ne!(da, db);
        assert!(da.windows(2).any(|w| w[0] != w[1]));
    }
}
