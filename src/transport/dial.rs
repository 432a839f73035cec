//! Dialling a host name that resolves to several addresses, the happy-eyeballs way (RFC 8305).
//!
//! The addresses are ordered as the resolver sorted them (RFC 6724) with the two families
//! interleaved, starting with the family of the first ([`interleave`], RFC 8305 section 4). The
//! first attempt starts at once; the next starts when the previous one failed or after
//! [`ATTEMPT_DELAY`] while it is still pending, whichever comes first (section 5); the first
//! success wins and the attempts still pending are dropped, which cancels them. WebSocket (the
//! TCP connect), QUIC (the whole QUIC handshake) and placement (the TCP connect) all dial through
//! [`race`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use smol::future::FutureExt;

/// How long an attempt may stay pending before the next address is tried alongside it: RFC
/// 8305's recommended "Connection Attempt Delay" (section 8).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Resolves `host`:`port` to every address it has, in dialling order ([`interleave`]).
///
/// Errors: the resolver's, or "resolves to no address", as one sentence naming `host`.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addrs = smol::net::resolve((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    for a in addrs {
        if !unique.contains(&a) {
            unique.push(a);
        }
    }
    if unique.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    Ok(interleave(unique))
}

/// `addrs` with the address families alternating, starting with the family of the first
/// address; within each family the given order is kept (RFC 8305 section 4, "First Address
/// Family Count" 1).
pub fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let first_v6 = first.is_ipv6();
    let (mut lead, mut other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(addrs.len());
    lead.reverse();
    other.reverse();
    loop {
        match (lead.pop(), other.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Every address [`race`] tried and why it failed, in the order the attempts were started.
#[derive(Debug)]
pub struct Failed<E> {
    /// Each address tried, with its error; `None` when it had not answered when the time limit
    /// (the handshake timeout) ran out.
    pub tried: Vec<(SocketAddr, Option<E>)>,
    /// The time limit of the whole race.
    pub limit: Duration,
}

impl<E> Failed<E> {
    /// The errors of the attempts that failed (not those that did not answer in time).
    pub fn errors(&self) -> impl Iterator<Item = &E> {
        self.tried.iter().filter_map(|(_, e)| e.as_ref())
    }
}

impl<E: fmt::Display> fmt::Display for Failed<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (addr, e)) in self.tried.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match e {
                Some(e) => write!(f, "{addr}: {e}")?,
                None => write!(
                    f,
                    "{addr}: no answer within handshake-timeout ({:?})",
                    self.limit
                )?,
            }
        }
        Ok(())
    }
}

/// `fut`'s outcome with the address it was for.
async fn tagged<T, E>(
    addr: SocketAddr,
    fut: impl Future<Output = Result<T, E>>,
) -> (SocketAddr, Result<T, E>) {
    (addr, fut.await)
}

enum Step<T, E> {
    Done(SocketAddr, Result<T, E>),
    Next,
    OutOfTime,
}

/// Races `attempt` over `addrs` (in the given order; see [`interleave`]), starting the next
/// address when the previous attempt failed or after `delay` while it is pending. Returns the
/// first success with its address; the attempts still pending are dropped, which cancels them.
/// When every attempt failed, or `limit` passed first (addresses not yet tried are then not
/// tried), returns each address tried with its error, in the order they were started. Each
/// attempt is logged (debug) with its address.
pub async fn race<T, E, F, Fut>(
    addrs: &[SocketAddr],
    delay: Duration,
    limit: Duration,
    mut attempt: F,
) -> Result<(T, SocketAddr), Failed<E>>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let out_of_time = smol::Timer::after(limit);
    let mut out_of_time = std::pin::pin!(out_of_time);
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    let mut failed = Failed {
        tried: Vec::new(),
        limit,
    };
    // The addresses started, in order: the order of the report.
    let mut order = Vec::with_capacity(addrs.len());
    let report = |mut failed: Failed<E>, order: &[SocketAddr]| {
        for a in order {
            if !failed.tried.iter().any(|(t, _)| t == a) {
                failed.tried.push((*a, None));
            }
        }
        failed
            .tried
            .sort_by_key(|(a, _)| order.iter().position(|o| o == a));
        failed
    };
    // Each turn starts the next address (if any is left): at first, after a failure, or after
    // `delay` without an answer.
    loop {
        if next < addrs.len() {
            let addr = addrs[next];
            log::debug!("trying {addr} ({} of {})", next + 1, addrs.len());
            pending.push(tagged(addr, attempt(addr)));
            order.push(addr);
            next += 1;
        }
        if pending.is_empty() {
            return Err(report(failed, &order));
        }
        let more = next < addrs.len();
        let step = async {
            match pending.next().await {
                Some((addr, result)) => Step::Done(addr, result),
                None => std::future::pending().await,
            }
        }
        .or(async {
            if more {
                smol::Timer::after(delay).await;
                Step::Next
            } else {
                std::future::pending().await
            }
        })
        .or(async {
            (&mut out_of_time).await;
            Step::OutOfTime
        })
        .await;
        match step {
            Step::Done(addr, Ok(t)) => return Ok((t, addr)),
            Step::Done(addr, Err(e)) => failed.tried.push((addr, Some(e))),
            Step::Next => {}
            Step::OutOfTime => {
                drop(pending);
                return Err(report(failed, &order));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::time::Instant;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn families_alternate_starting_with_the_first() {
        let v6a = addr("[::1]:1");
        let v6b = addr("[fd00::1]:1");
        let v6c = addr("[fd00::2]:1");
        let v4a = addr("127.0.0.1:1");
        let v4b = addr("10.0.0.1:1");
        assert_eq!(
            interleave(vec![v6a, v6b, v6c, v4a, v4b]),
            vec![v6a, v4a, v6b, v4b, v6c]
        );
        assert_eq!(
            interleave(vec![v4a, v4b, v6a]),
            vec![v4a, v6a, v4b],
            "the first address's family leads"
        );
        assert_eq!(interleave(vec![v4a, v4b]), vec![v4a, v4b]);
        assert_eq!(interleave(Vec::new()), Vec::<SocketAddr>::new());
    }

    /// What a fake attempt does.
    #[derive(Clone, Copy)]
    enum Fake {
        /// Never answers.
        Hang,
        /// Fails after this long.
        Fail(u64),
        /// Succeeds after this long.
        Win(u64),
    }

    /// Runs `race` over fake attempts; returns the outcome and when (ms after the start) each
    /// address was started.
    fn run(
        plan: &[(SocketAddr, Fake)],
        delay: Duration,
    ) -> (Result<SocketAddr, String>, Vec<(SocketAddr, u64)>) {
        let t0 = Instant::now();
        let started = RefCell::new(Vec::new());
        let addrs: Vec<SocketAddr> = plan.iter().map(|(a, _)| *a).collect();
        let result = smol::block_on(race(&addrs, delay, Duration::from_secs(4), |a| {
            started
                .borrow_mut()
                .push((a, t0.elapsed().as_millis() as u64));
            let fake = plan.iter().find(|(p, _)| *p == a).unwrap().1;
            async move {
                match fake {
                    Fake::Hang => std::future::pending().await,
                    Fake::Fail(ms) => {
                        smol::Timer::after(Duration::from_millis(ms)).await;
                        Err(format!("refused {ms}"))
                    }
                    Fake::Win(ms) => {
                        smol::Timer::after(Duration::from_millis(ms)).await;
                        Ok(a)
                    }
                }
            }
        }));
        let result = result.map(|(a, b)| {
            assert_eq!(a, b, "the winner is reported with its address");
            a
        });
        (result.map_err(|e| e.to_string()), started.into_inner())
    }

    #[test]
    fn a_hanging_first_address_does_not_stop_the_second() {
        let (v6, v4) = (addr("[::1]:9"), addr("127.0.0.1:9"));
        let (won, started) = run(&[(v6, Fake::Hang), (v4, Fake::Win(10))], ATTEMPT_DELAY);
        assert_eq!(won, Ok(v4));
        assert_eq!(started.len(), 2);
        assert_eq!(started[0], (v6, 0));
        let second = started[1].1;
        assert!(
            (250..600).contains(&second),
            "the second attempt starts one attempt delay after the first: {second} ms"
        );
    }

    #[test]
    fn a_failure_starts_the_next_address_at_once() {
        let (a, b, c) = (addr("[::1]:9"), addr("127.0.0.1:9"), addr("[::2]:9"));
        let delay = Duration::from_secs(5);
        let (won, started) = run(
            &[(a, Fake::Fail(10)), (b, Fake::Fail(10)), (c, Fake::Win(1))],
            delay,
        );
        assert_eq!(won, Ok(c));
        let times: Vec<u64> = started.iter().map(|s| s.1).collect();
        assert!(
            times[2] < 1000,
            "each failure starts the next without waiting for the delay: {times:?}"
        );
    }

    #[test]
    fn attempts_overlap_and_the_first_success_wins() {
        // The first address answers slowly, the second quickly: both run at once and the
        // second wins although it started later.
        let (a, b, c) = (addr("[::1]:9"), addr("127.0.0.1:9"), addr("[::2]:9"));
        let delay = Duration::from_millis(50);
        let (won, started) = run(
            &[(a, Fake::Win(3000)), (b, Fake::Win(10)), (c, Fake::Hang)],
            delay,
        );
        assert_eq!(won, Ok(b));
        assert_eq!(
            started.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![a, b],
            "no attempt starts after one succeeded"
        );
    }

    #[test]
    fn all_failures_are_named_in_start_order() {
        let (a, b) = (addr("[::1]:9"), addr("127.0.0.1:9"));
        // b starts after the delay and fails first; the report keeps the order of the starts.
        let delay = Duration::from_millis(20);
        let (won, _) = run(&[(a, Fake::Fail(300)), (b, Fake::Fail(10))], delay);
        assert_eq!(
            won,
            Err("[::1]:9: refused 300; 127.0.0.1:9: refused 10".to_owned())
        );
    }

    #[test]
    fn the_time_limit_ends_the_race_and_names_what_did_not_answer() {
        let (a, b, c) = (addr("[::1]:9"), addr("127.0.0.1:9"), addr("[::2]:9"));
        let t0 = Instant::now();
        let result = smol::block_on(race(
            &[a, b, c],
            Duration::from_millis(100),
            Duration::from_millis(200),
            |addr| async move {
                if addr == b {
                    Err("refused")
                } else {
                    std::future::pending::<Result<(), &str>>().await
                }
            },
        ));
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        let failed = result.unwrap_err();
        assert_eq!(
            failed.to_string(),
            "[::1]:9: no answer within handshake-timeout (200ms); 127.0.0.1:9: refused; [::2]:9: no answer within handshake-timeout (200ms)"
        );
        assert_eq!(failed.errors().collect::<Vec<_>>(), vec![&"refused"]);
    }
}
