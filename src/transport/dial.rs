//! Dialling a host name that resolves to several addresses, the happy-eyeballs way (RFC 8305).
//!
//! The addresses are ordered as the resolver sorted them (RFC 6724) with the two families
//! interleaved, starting with the family of the first ([`interleave`], RFC 8305 section 4), and
//! the address that answered last time first ([`LastGood`]). The first attempt starts at once;
//! the next starts when the previous one failed or after [`ATTEMPT_DELAY`] while it is still
//! pending, whichever comes first (section 5); the first success wins and the attempts still
//! pending are dropped, which cancels them. An attempt is everything up to a usable connection:
//! for WebSocket the TCP connect, the TLS handshake and the HTTP upgrade; for QUIC the whole QUIC
//! handshake; for placement the TCP connect, the TLS handshake and the HTTP exchange. A failure
//! that is the peer's own answer (see [`race`]'s `is_final`) ends the race at once: the other
//! addresses belong to the same service, which has answered.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use smol::future::FutureExt;

use crate::config::Endpoint;

/// How long an attempt may stay pending before the next address is tried alongside it: RFC
/// 8305's recommended "Connection Attempt Delay" (section 8).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The time a whole connect may take (the edge's `handshake-timeout`), counted from when it
/// started: resolving the host and every attempt share it, and reports name `total`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// The configured limit, as reports name it.
    pub total: Duration,
    /// When the connect started.
    pub since: Instant,
}

impl Limit {
    /// `total`, starting now.
    pub fn new(total: Duration) -> Limit {
        Limit {
            total,
            since: Instant::now(),
        }
    }

    /// When time runs out.
    pub fn until(&self) -> Instant {
        self.since + self.total
    }
}

/// Resolves `host`:`port` to every address it has, in dialling order ([`interleave`]), within
/// `limit` (the resolver is part of the connect it bounds).
///
/// Errors: the resolver's, "resolves to no address", or no answer within `limit`, as one
/// sentence naming `host`.
pub async fn resolve(host: &str, port: u16, limit: Limit) -> Result<Vec<SocketAddr>, String> {
    let left = limit.until().saturating_duration_since(Instant::now());
    let addrs = super::timeout(left, smol::net::resolve((host, port)))
        .await
        .ok_or_else(|| {
            format!(
                "cannot resolve {host} within handshake-timeout ({:?})",
                limit.total
            )
        })?
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

/// The most endpoints a [`LastGood`] remembers; the edge dials two (placement and the cloud),
/// a few more when placement answers with different endpoints over time.
const LAST_GOOD_ENTRIES: usize = 8;

/// The address that last connected for each endpoint dialled, tried first on the next connect
/// (what browsers do on top of RFC 8305, whose section 4 allows ordering by history): an edge
/// whose first resolved address is dead reconnects to the one that worked without paying the
/// [`ATTEMPT_DELAY`] again. Should that address fail in turn, the others follow as usual. Holds
/// at most [`LAST_GOOD_ENTRIES`] endpoints, dropping the one used least recently.
#[derive(Debug, Default)]
pub struct LastGood {
    /// Most recently used last.
    entries: Vec<(Endpoint, SocketAddr)>,
}

impl LastGood {
    /// `addrs` (as [`resolve`] ordered them) with the address that last connected to
    /// `endpoint` first, when it is among them; the families still alternate after it
    /// ([`interleave`]).
    pub fn order(&self, endpoint: &Endpoint, addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
        let Some(good) = self
            .entries
            .iter()
            .find(|(e, _)| e == endpoint)
            .map(|(_, a)| *a)
            .filter(|a| addrs.contains(a))
        else {
            return addrs;
        };
        let mut ordered = Vec::with_capacity(addrs.len());
        ordered.push(good);
        ordered.extend(addrs.into_iter().filter(|a| *a != good));
        interleave(ordered)
    }

    /// `addr` connected to `endpoint`.
    pub fn remember(&mut self, endpoint: &Endpoint, addr: SocketAddr) {
        self.entries.retain(|(e, _)| e != endpoint);
        if self.entries.len() >= LAST_GOOD_ENTRIES {
            self.entries.remove(0);
        }
        self.entries.push((endpoint.clone(), addr));
    }
}

/// How an attempt that did not win ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<E> {
    /// It failed with this error.
    Failed(E),
    /// It had not finished when the time limit (the handshake timeout) ran out.
    NoAnswer,
    /// It had not finished when another address gave a final answer, and was dropped.
    Abandoned,
}

/// Every address [`race`] tried and why it failed, in the order the attempts were started.
#[derive(Debug)]
pub struct Failed<E> {
    /// Each address tried, with how its attempt ended.
    pub tried: Vec<(SocketAddr, Outcome<E>)>,
    /// The time limit named in the report (the handshake timeout).
    pub limit: Duration,
    /// The address whose failure was a final answer, which ended the race (its entry in `tried`
    /// is [`Outcome::Failed`]); `None` when every attempt failed or ran out of time.
    pub final_answer: Option<SocketAddr>,
}

impl<E> Failed<E> {
    /// The errors of the attempts that failed (not those that did not answer in time).
    pub fn errors(&self) -> impl Iterator<Item = &E> {
        self.tried.iter().filter_map(|(_, o)| match o {
            Outcome::Failed(e) => Some(e),
            _ => None,
        })
    }

    /// The final answer that ended the race, if one did.
    pub fn final_error(&self) -> Option<&E> {
        let addr = self.final_answer?;
        self.tried.iter().find_map(|(a, o)| match o {
            Outcome::Failed(e) if *a == addr => Some(e),
            _ => None,
        })
    }
}

/// One line. Without a final answer: every address tried as `ADDRESS: ERROR`, in start order,
/// separated by `; `. With one: `ERROR (ADDRESS)` of the final answer first, then `; also tried `
/// and the others the same way.
impl<E: fmt::Display> fmt::Display for Failed<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let (Some(addr), Some(e)) = (self.final_answer, self.final_error()) {
            write!(f, "{e} ({addr})")?;
            sep = "; also tried ";
        }
        for (addr, outcome) in &self.tried {
            if Some(*addr) == self.final_answer {
                continue;
            }
            f.write_str(sep)?;
            sep = "; ";
            match outcome {
                Outcome::Failed(e) => write!(f, "{addr}: {e}")?,
                Outcome::NoAnswer => write!(
                    f,
                    "{addr}: no answer within handshake-timeout ({:?})",
                    self.limit
                )?,
                Outcome::Abandoned => write!(f, "{addr}: not finished, abandoned")?,
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

/// Races `attempt` over `addrs` (in the given order; see [`interleave`] and [`LastGood`]),
/// starting the next address when the previous attempt failed or after `delay` while it is
/// pending. Returns the first success with its address; the attempts still pending are dropped,
/// which cancels them.
///
/// An error for which `is_final` is true is the peer's own answer (for the edge: the cloud
/// refused the request or this side's certificate, after proving it is the cloud): it ends the
/// race at once, as a failure, with the pending attempts dropped ([`Outcome::Abandoned`]) and no
/// further address started. Any other error only moves the race on.
///
/// When every attempt failed, or `limit` ran out first (addresses not yet tried are then not
/// tried), returns each address tried with how it ended, in the order they were started. Each
/// attempt, and each failure with its error, is logged (debug) with its address.
pub async fn race<T, E, F, Fut>(
    addrs: &[SocketAddr],
    delay: Duration,
    limit: Limit,
    is_final: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<(T, SocketAddr), Failed<E>>
where
    E: fmt::Display,
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let out_of_time = smol::Timer::at(limit.until());
    let mut out_of_time = std::pin::pin!(out_of_time);
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    let mut ended: Vec<(SocketAddr, E)> = Vec::new();
    // The addresses started, in order: the order of the report.
    let mut order = Vec::with_capacity(addrs.len());
    // The report: what failed, and the rest of what was started as `unfinished`.
    let report = |mut ended: Vec<(SocketAddr, E)>,
                  order: &[SocketAddr],
                  unfinished: fn() -> Outcome<E>,
                  final_answer: Option<SocketAddr>| {
        let tried = order
            .iter()
            .map(|a| match ended.iter().position(|(e, _)| e == a) {
                Some(i) => (*a, Outcome::Failed(ended.swap_remove(i).1)),
                None => (*a, unfinished()),
            })
            .collect();
        Failed {
            tried,
            limit: limit.total,
            final_answer,
        }
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
            return Err(report(ended, &order, || Outcome::NoAnswer, None));
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
            Step::Done(addr, Err(e)) => {
                let stop = is_final(&e);
                let what = if stop { "final answer" } else { "failed" };
                log::debug!("{addr}: {what}: {e}");
                ended.push((addr, e));
                if stop {
                    drop(pending);
                    return Err(report(ended, &order, || Outcome::Abandoned, Some(addr)));
                }
            }
            Step::Next => {}
            Step::OutOfTime => {
                drop(pending);
                return Err(report(ended, &order, || Outcome::NoAnswer, None));
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
        /// Fails with a final answer after this long.
        Answer(u64),
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
        let limit = Limit::new(Duration::from_secs(4));
        // The fake attempts' errors say "final" when they are a final answer.
        let is_final = |e: &String| e.starts_with("final");
        let result = smol::block_on(race(&addrs, delay, limit, is_final, |a| {
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
                    Fake::Answer(ms) => {
                        smol::Timer::after(Duration::from_millis(ms)).await;
                        Err(format!("final answer {ms}"))
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
            Limit::new(Duration::from_millis(200)),
            |_: &&str| false,
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

    #[test]
    fn a_final_answer_ends_the_race_and_comes_first_in_the_report() {
        // The first address hangs; the second answers finally (the cloud refused us): the
        // third is never started and the first is abandoned, not waited for.
        let (a, b, c) = (addr("[::1]:9"), addr("127.0.0.1:9"), addr("[::2]:9"));
        let delay = Duration::from_millis(50);
        let t0 = Instant::now();
        let (won, started) = run(
            &[(a, Fake::Hang), (b, Fake::Answer(10)), (c, Fake::Win(1))],
            delay,
        );
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(
            won,
            Err(
                "final answer 10 (127.0.0.1:9); also tried [::1]:9: not finished, abandoned"
                    .to_owned()
            )
        );
        assert_eq!(
            started.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![a, b],
            "no address is started after a final answer"
        );
    }

    #[test]
    fn errors_that_are_not_answers_move_the_race_on() {
        // A failure that is not final (a TLS handshake cut short, say) starts the next address.
        let (a, b) = (addr("[::1]:9"), addr("127.0.0.1:9"));
        let (won, _) = run(
            &[(a, Fake::Fail(5)), (b, Fake::Answer(5))],
            Duration::from_secs(5),
        );
        assert_eq!(
            won,
            Err("final answer 5 (127.0.0.1:9); also tried [::1]:9: refused 5".to_owned())
        );
    }

    #[test]
    fn the_last_good_address_is_tried_first() {
        let ep = Endpoint {
            host: "localhost".into(),
            port: 9,
        };
        let (v6a, v6b, v4a, v4b) = (
            addr("[::1]:9"),
            addr("[::2]:9"),
            addr("127.0.0.1:9"),
            addr("127.0.0.2:9"),
        );
        let resolved = vec![v6a, v4a, v6b, v4b];
        let mut last = LastGood::default();
        assert_eq!(
            last.order(&ep, resolved.clone()),
            resolved,
            "nothing known yet"
        );
        last.remember(&ep, v4b);
        assert_eq!(
            last.order(&ep, resolved.clone()),
            vec![v4b, v6a, v4a, v6b],
            "the last good address first, the families still alternating"
        );
        let other = Endpoint {
            host: "cloud".into(),
            port: 9,
        };
        assert_eq!(
            last.order(&other, resolved.clone()),
            resolved,
            "per endpoint"
        );
        assert_eq!(
            last.order(&ep, vec![v6a, v4a]),
            vec![v6a, v4a],
            "an address no longer resolved is not added"
        );
        for i in 0..LAST_GOOD_ENTRIES as u16 {
            let e = Endpoint {
                host: format!("h{i}"),
                port: 1,
            };
            last.remember(&e, v6a);
        }
        assert_eq!(last.entries.len(), LAST_GOOD_ENTRIES);
        assert_eq!(
            last.order(&ep, resolved.clone()),
            resolved,
            "the oldest goes"
        );
    }
}
