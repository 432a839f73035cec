//! Dialling a host name that resolves to several addresses, the happy-eyeballs way (RFC 8305),
//! with fresh attempts beside the ones that stall.
//!
//! The addresses are ordered as the resolver sorted them (RFC 6724) with the two families
//! interleaved, starting with the family of the first ([`interleave`], RFC 8305 section 4), and
//! the address that answered last time first ([`LastGood`]). The first attempt starts at once;
//! the next starts when the previous one failed, or when the [`Pacer`]'s gap (about two round
//! trips of the last link; [`ATTEMPT_DELAY`] before any) passed with no answer from any pending
//! attempt (RFC 8305 section 5). Once every address has been started, the gap starts a *fresh*
//! attempt (a new connection) to an address that has not answered yet, beside the stalled ones:
//! an attempt whose packets were lost while the path was down waits out its transport's
//! retransmission timer (TCP SYN, QUIC Initial: 1 s, 2 s, 4 s, …), a fresh one goes out as soon
//! as the path is back. Beyond [`MAX_ALIVE`] pending attempts the oldest is abandoned once it
//! had [`KEEP_FOR`]; at most [`MAX_PENDING`] are pending, a fresh one waiting for the oldest to
//! have had its time. The pacer sets their rate: every two round trips for a while
//! ([`FAST_FOR`]), then slowing to one a second. The first success wins and the attempts still
//! pending are dropped, which cancels them. An attempt is everything up to a usable connection:
//! for WebSocket the TCP connect, the TLS handshake and the HTTP upgrade; for QUIC the whole QUIC
//! handshake; for placement the TCP connect, the TLS handshake and the HTTP exchange. A failure
//! that is the peer's own answer ([`Verdict::Final`]) ends the race at once: the other addresses
//! belong to the same service, which has answered.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use smol::future::FutureExt;

use crate::config::Endpoint;

/// How long an attempt may stay pending before the next address is tried alongside it, when no
/// round trip has been measured yet: RFC 8305's recommended "Connection Attempt Delay"
/// (section 8).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The shortest gap between attempts, however short the measured round trip (RFC 8305
/// section 5's lower bound for the attempt delay is 100 ms too).
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// The longest gap between attempts once a silence has lasted past the fast phase
/// ([`FAST_FOR`]): at most about one attempt a second per edge during a long outage, so 10,000
/// edges that lost a dead cloud host send it no more than about 10,000 packets a second, spread
/// by jitter.
pub const MAX_GAP: Duration = Duration::from_secs(1);

/// How long a silence is bridged at the base gap (about two round trips) before the gap grows
/// towards [`MAX_GAP`] (`controller.fast-attempts-for`'s default): an outage of up to a minute
/// (a radio handover, a tunnel, a flapping route) ends with an attempt at most two round trips,
/// or `KEEP_FOR / MAX_PENDING` (250 ms) once [`MAX_ALIVE`] are pending, after the path returns; a longer
/// one settles at the cap. At a 50 ms round trip that is about 240 attempts in the minute, each
/// sent about twice in its 2 s: about 30 KB of TCP SYNs, or 0.6 MB of 1,228-byte QUIC Initials
/// (docs/protocol.md section 6).
pub const FAST_FOR: Duration = Duration::from_secs(60);

/// Attempts pending beyond which starting another abandons the oldest, once that one has been
/// pending for [`KEEP_FOR`] (up to [`MAX_PENDING`] are pending while none has had its time).
pub const MAX_ALIVE: usize = 4;

/// The most attempts pending at once whatever their age: when the path returns, the cloud sees
/// at most this many handshakes of one edge (each costs it a key exchange and a signature), so a
/// fleet that returns together costs it at most this many times one handshake per edge. Once
/// this many are pending, a fresh attempt waits until the oldest has been pending for
/// [`KEEP_FOR`] (and abandons it); beyond [`MAX_ALIVE`], attempts are at least
/// `KEEP_FOR / MAX_PENDING` (250 ms) apart, so they go evenly, not in bursts.
pub const MAX_PENDING: usize = 8;

/// How long an attempt is kept pending at least, however many fresh ones start beside it: a
/// handshake of three round trips (TCP, TLS, the upgrade) over a 600 ms path, so that an attempt
/// on a path slower than the last link's is not abandoned before it can finish. At the shortest
/// gap ([`MIN_GAP`], 75 ms with jitter) that would be 27 attempts pending at once: [`MAX_PENDING`]
/// caps them by holding fresh attempts back instead.
pub const KEEP_FOR: Duration = Duration::from_secs(2);

/// The pace of connection attempts for one dialler, kept across its dials so that a dial that
/// follows one that got no answer goes on at the same pace (and the cap holds across them).
///
/// The gap between two attempts started without an answer between them is the *base* (two
/// measured round trips, clamped to [`MIN_GAP`]..[`MAX_GAP`]; [`ATTEMPT_DELAY`] before any link)
/// for the first `fast_for` ([`FAST_FOR`] by default) after the first attempt since the last
/// link, then grows by half with each attempt up to [`MAX_GAP`]. Each gap is drawn from its upper
/// quarter (75-100 %), so diallers that lost the same host together drift apart. A link that
/// opens ([`Pacer::link_opened`]) starts the schedule again.
#[derive(Debug, Clone)]
pub struct Pacer {
    base: Duration,
    /// How long the attempts go at the base gap.
    fast_for: Duration,
    /// When the first attempt since the last link opened started.
    silent_since: Option<Instant>,
    /// Attempts started since the fast phase ended.
    slow: u32,
    /// When the last attempt started.
    last_start: Option<Instant>,
    /// The gap that must pass after `last_start` before the next silent attempt.
    gap: Duration,
    rng: u64,
}

impl Default for Pacer {
    fn default() -> Pacer {
        Pacer::new(ATTEMPT_DELAY, 0x9e37_79b9_7f4a_7c15)
    }
}

impl Pacer {
    /// A pacer whose base gap is `base` (not clamped: tests use any), with a fast phase of
    /// [`FAST_FOR`], jitter seeded by `seed`.
    pub fn new(base: Duration, seed: u64) -> Pacer {
        Pacer {
            base,
            fast_for: FAST_FOR,
            silent_since: None,
            slow: 0,
            last_start: None,
            gap: Duration::ZERO,
            rng: seed | 1,
        }
    }

    /// This pacer with a fast phase of `fast_for`: how long after the first attempt since the
    /// last link the attempts go at the base gap (`controller.fast-attempts-for`).
    pub fn with_fast_for(self, fast_for: Duration) -> Pacer {
        Pacer { fast_for, ..self }
    }

    /// The base gap for a link whose round trip was `rtt`: `2 × rtt` clamped to
    /// [`MIN_GAP`]..[`MAX_GAP`].
    pub fn base_for(rtt: Duration) -> Duration {
        (rtt * 2).clamp(MIN_GAP, MAX_GAP)
    }

    /// The base gap now.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// A link opened; `rtt` is its measured round trip if known. The next attempts go at the
    /// base pace again, derived from `rtt` ([`Pacer::base_for`]).
    pub fn link_opened(&mut self, rtt: Option<Duration>) {
        if let Some(rtt) = rtt {
            self.base = Pacer::base_for(rtt);
        }
        self.silent_since = None;
        self.slow = 0;
        self.last_start = None;
        self.gap = Duration::ZERO;
    }

    /// A connection got through (its transport's handshake finished, whatever the cloud then
    /// says): the path is there, so a silence that follows is a new one and starts with the fast
    /// phase again. Failures do not count: a local "network unreachable" of one address family
    /// says nothing of the path.
    pub fn answered(&mut self) {
        self.silent_since = None;
        self.slow = 0;
    }

    /// When the next attempt may start if nothing answers before.
    pub fn due(&self) -> Instant {
        match self.last_start {
            Some(t) => t + self.gap,
            None => Instant::now(),
        }
    }

    /// Records an attempt started `now` and draws the gap before the next one: the base gap
    /// within the fast phase, then half as much again with each attempt, up to [`MAX_GAP`] (or
    /// the base, when that is longer).
    pub fn started(&mut self, now: Instant) {
        let since = *self.silent_since.get_or_insert(now);
        let mut step = self.base;
        if now.saturating_duration_since(since) >= self.fast_for {
            self.slow = self.slow.saturating_add(1);
            let grown = self.slow.min(16) as i32;
            step = step.mul_f64(1.5f64.powi(grown)).min(MAX_GAP.max(self.base));
        }
        let frac = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        self.gap = step.mul_f64(0.75 + 0.25 * frac);
        self.last_start = Some(now);
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for jitter.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What a failed attempt says about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The peer's own answer about the request (a refusal of the certificate, an HTTP status):
    /// ends the whole race.
    Final,
    /// Something answered (a refused or reset connection, a TLS failure): this address is done,
    /// the next one starts at once.
    Answer,
    /// Nothing came back (the transport gave up waiting): the address stays a candidate for
    /// fresh attempts.
    Silence,
}

/// The time a whole connect may take (the edge's `handshake-timeout`), counted from when it
/// started: resolving the host and every attempt share it, and reports name `total`; and the
/// most attempts it may start ([`race`]).
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// The configured limit, as reports name it.
    pub total: Duration,
    /// When the connect started.
    pub since: Instant,
    /// The most attempts (fresh ones to one address count each); unbounded by default.
    pub attempts: usize,
}

impl Limit {
    /// `total`, starting now, with no bound on attempts.
    pub fn new(total: Duration) -> Limit {
        Limit {
            total,
            since: Instant::now(),
            attempts: usize::MAX,
        }
    }

    /// This limit with at most `n` attempts (at least 1).
    pub fn with_attempts(self, n: usize) -> Limit {
        Limit {
            attempts: n.max(1),
            ..self
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

/// How an address's attempts ended, when none won.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<E> {
    /// Its last attempt to end failed with this error.
    Failed(E),
    /// None had finished when the time limit (the handshake timeout) or the most attempts ran
    /// out.
    NoAnswer,
    /// None had finished when another address gave a final answer, and they were dropped.
    Abandoned,
}

/// Every address [`race`] tried and why it failed, in the order they were first started.
#[derive(Debug)]
pub struct Failed<E> {
    /// Each address tried, with how its attempts ended.
    pub tried: Vec<(SocketAddr, Outcome<E>)>,
    /// The time limit named in the report (the handshake timeout).
    pub limit: Duration,
    /// The address whose failure was a final answer, which ended the race (its entry in `tried`
    /// is [`Outcome::Failed`]); `None` when every attempt failed or ran out of time.
    pub final_answer: Option<SocketAddr>,
    /// Attempts started (fresh attempts to one address count each).
    pub attempts: usize,
    /// Whether nothing answered at all: every attempt ended in [`Verdict::Silence`], was still
    /// pending at the end, or was abandoned as the oldest.
    pub silent: bool,
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

/// How one attempt ended inside the race.
enum Ended<T, E> {
    Done(Result<T, E>),
    /// Abandoned as the oldest pending attempt.
    Superseded,
}

/// `fut`'s outcome with the address it was for; resolves to [`Ended::Superseded`] when
/// `cancel`'s sender is dropped first.
async fn tagged<T, E>(
    addr: SocketAddr,
    cancel: smol::channel::Receiver<()>,
    fut: impl Future<Output = Result<T, E>>,
) -> (SocketAddr, Ended<T, E>) {
    let ended = async { Ended::Done(fut.await) }
        .or(async {
            let _ = cancel.recv().await;
            Ended::Superseded
        })
        .await;
    (addr, ended)
}

enum Step<T, E> {
    Done(SocketAddr, Ended<T, E>),
    Next,
    OutOfTime,
}

/// Races `attempt` over `addrs` (in the given order; see [`interleave`] and [`LastGood`]),
/// at the pace of `pacer` (see the module documentation): the next address starts when an
/// attempt got an answer that was not final, or when the pacer's gap passed while every pending
/// attempt stayed silent; once every address was started, each gap starts a fresh attempt to an
/// address that has not answered (in turn), keeping at most [`MAX_ALIVE`] pending (the oldest
/// abandoned once it was pending for [`KEEP_FOR`]; at most [`MAX_PENDING`] pending, a fresh one
/// waiting for the oldest to have had its time). At most `limit.attempts` are started; past
/// them, what is pending may still finish until the time limit. Returns the first success with
/// its address; the
/// attempts still pending are dropped, which cancels them.
///
/// `verdict` says what a failure means: [`Verdict::Final`] (for the edge: the cloud refused the
/// request or this side's certificate, after proving it is the cloud) ends the race at once, as
/// a failure, with the pending attempts dropped ([`Outcome::Abandoned`]) and nothing further
/// started; [`Verdict::Answer`] takes that address out of the race and starts the next one at
/// once; [`Verdict::Silence`] leaves the address in for fresh attempts.
///
/// When every address answered, or `limit` ran out first, returns each address tried with how
/// it ended, in the order they were first started. Each attempt, and each failure with its
/// error, is logged (debug) with its address.
pub async fn race<T, E, F, Fut>(
    addrs: &[SocketAddr],
    pacer: &mut Pacer,
    limit: Limit,
    verdict: impl Fn(&E) -> Verdict,
    mut attempt: F,
) -> Result<(T, SocketAddr), Failed<E>>
where
    E: fmt::Display,
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let out_of_time = smol::Timer::at(limit.until());
    let mut out_of_time = std::pin::pin!(out_of_time);
    let at_most = limit.attempts;
    let mut pending = FuturesUnordered::new();
    // The cancel handles of the pending attempts, oldest first, with their ids and starts.
    let mut alive: VecDeque<(u64, smol::channel::Sender<()>, Instant)> = VecDeque::new();
    let mut next = 0;
    let mut started = 0usize;
    // Each address's last error, and whether any answer (not silence) came back.
    let mut ended: Vec<(SocketAddr, E)> = Vec::new();
    let mut answered = false;
    // Addresses that answered (not silence): no fresh attempts for them.
    let mut done: Vec<SocketAddr> = Vec::new();
    // The next address in turn for a fresh attempt.
    let mut turn = 0usize;
    // The addresses started, in order: the order of the report.
    let mut order: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    let report = |mut ended: Vec<(SocketAddr, E)>,
                  order: &[SocketAddr],
                  unfinished: fn() -> Outcome<E>,
                  final_answer: Option<SocketAddr>,
                  attempts: usize,
                  silent: bool| {
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
            attempts,
            silent,
        }
    };
    // Whether to start an attempt now: at first (unless the previous dial's last attempt was
    // too recent for the pacer), and after an answer while addresses are left.
    let mut start_now = pacer.due() <= Instant::now();
    let mut id = 0u64;
    loop {
        // Whether MAX_PENDING attempts are pending and the oldest has not had its time: then a
        // fresh attempt waits for it (abandoning a younger one could leave a path slower than
        // the last link's no attempt that lives long enough to finish).
        // And beyond MAX_ALIVE, attempts are spaced by at least KEEP_FOR / MAX_PENDING, so that
        // they go evenly rather than in bursts of MAX_PENDING each KEEP_FOR.
        let held_until = |alive: &VecDeque<(u64, smol::channel::Sender<()>, Instant)>| {
            let full = (alive.len() >= MAX_PENDING)
                .then(|| alive.front().map(|(_, _, at)| *at + KEEP_FOR))
                .flatten();
            let spaced = (alive.len() >= MAX_ALIVE)
                .then(|| {
                    alive
                        .back()
                        .map(|(_, _, at)| *at + KEEP_FOR / MAX_PENDING as u32)
                })
                .flatten();
            full.max(spaced)
        };
        if start_now && started < at_most && held_until(&alive).is_none_or(|t| t <= Instant::now())
        {
            // The next address never tried, else the next one in turn that has not answered.
            let addr = if next < addrs.len() {
                next += 1;
                Some(addrs[next - 1])
            } else {
                let live: Vec<SocketAddr> = order
                    .iter()
                    .copied()
                    .filter(|a| !done.contains(a))
                    .collect();
                (!live.is_empty()).then(|| {
                    turn += 1;
                    live[(turn - 1) % live.len()]
                })
            };
            if let Some(addr) = addr {
                // Dropping the sender ends that attempt as superseded: the oldest, once it had
                // its time.
                let now = Instant::now();
                while alive.len() >= MAX_ALIVE
                    && alive
                        .front()
                        .is_some_and(|(_, _, at)| now.saturating_duration_since(*at) >= KEEP_FOR)
                {
                    alive.pop_front();
                }
                started += 1;
                let fresh = order.contains(&addr);
                let nth = order.iter().position(|a| *a == addr).unwrap_or(order.len()) + 1;
                if fresh {
                    log::debug!(
                        "trying {addr} again ({nth} of {}, attempt {started})",
                        addrs.len()
                    );
                } else {
                    log::debug!("trying {addr} ({nth} of {})", addrs.len());
                }
                if !fresh {
                    order.push(addr);
                }
                let (tx, rx) = smol::channel::bounded(1);
                id += 1;
                alive.push_back((id, tx, Instant::now()));
                let my_id = id;
                let fut = attempt(addr);
                pending.push(async move {
                    let (addr, ended) = tagged(addr, rx, fut).await;
                    (my_id, addr, ended)
                });
                pacer.started(Instant::now());
            }
        }
        start_now = false;
        if pending.is_empty() && (next >= addrs.len() || started >= at_most) {
            let no_more = order.iter().all(|a| done.contains(a)) || started >= at_most;
            if no_more && !order.is_empty() {
                return Err(report(
                    ended,
                    &order,
                    || Outcome::NoAnswer,
                    None,
                    started,
                    !answered,
                ));
            }
        }
        let can_start = next < addrs.len() || order.iter().any(|a| !done.contains(a));
        // Past `at_most` nothing more starts, but what is pending may still answer within the
        // time limit: a handshake over a long path takes longer than the gap between attempts.
        let due = (can_start && started < at_most).then(|| match held_until(&alive) {
            Some(t) => pacer.due().max(t),
            None => pacer.due(),
        });
        let step = async {
            match pending.next().await {
                Some((my_id, addr, result)) => {
                    alive.retain(|(i, _, _)| *i != my_id);
                    Step::Done(addr, result)
                }
                None => std::future::pending().await,
            }
        }
        .or(async {
            match due {
                Some(due) => {
                    smol::Timer::at(due).await;
                    Step::Next
                }
                None => std::future::pending().await,
            }
        })
        .or(async {
            (&mut out_of_time).await;
            Step::OutOfTime
        })
        .await;
        match step {
            Step::Done(addr, Ended::Done(Ok(t))) => {
                // The path is there: a silence after this connection is a new one. (Failures
                // do not say as much: a local "network unreachable" of one family is no answer
                // from the path, and must not keep a long outage in the fast phase.)
                pacer.answered();
                return Ok((t, addr));
            }
            Step::Done(addr, Ended::Done(Err(e))) => {
                let v = verdict(&e);
                let what = match v {
                    Verdict::Final => "final answer",
                    Verdict::Answer => "failed",
                    Verdict::Silence => "no answer",
                };
                log::debug!("{addr}: {what}: {e}");
                ended.retain(|(a, _)| *a != addr);
                ended.push((addr, e));
                match v {
                    Verdict::Final => {
                        drop(pending);
                        return Err(report(
                            ended,
                            &order,
                            || Outcome::Abandoned,
                            Some(addr),
                            started,
                            false,
                        ));
                    }
                    Verdict::Answer => {
                        answered = true;
                        if !done.contains(&addr) {
                            done.push(addr);
                        }
                        // An answer is not silence: the next address goes at once.
                        start_now = next < addrs.len();
                    }
                    Verdict::Silence => {}
                }
            }
            Step::Done(_, Ended::Superseded) => {}
            Step::Next => {
                start_now = true;
            }
            Step::OutOfTime => {
                drop(pending);
                return Err(report(
                    ended,
                    &order,
                    || Outcome::NoAnswer,
                    None,
                    started,
                    !answered,
                ));
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
        // The fake attempts' errors say "final" when they are a final answer, "silent" when
        // the transport gave up waiting.
        let verdict = |e: &String| {
            if e.starts_with("final") {
                Verdict::Final
            } else if e.starts_with("silent") {
                Verdict::Silence
            } else {
                Verdict::Answer
            }
        };
        let mut pacer = Pacer::new(delay, 7);
        let result = smol::block_on(race(&addrs, &mut pacer, limit, verdict, |a| {
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
            (187..600).contains(&second),
            "the second attempt starts one attempt delay (75-100 %) after the first: {second} ms"
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
        // (a's first attempt must finish before MAX_PENDING fresh ones supersede it.)
        let (won, _) = run(&[(a, Fake::Fail(120)), (b, Fake::Fail(10))], delay);
        assert_eq!(
            won,
            Err("[::1]:9: refused 120; 127.0.0.1:9: refused 10".to_owned())
        );
    }

    #[test]
    fn the_time_limit_ends_the_race_and_names_what_did_not_answer() {
        let (a, b, c) = (addr("[::1]:9"), addr("127.0.0.1:9"), addr("[::2]:9"));
        let t0 = Instant::now();
        let result = smol::block_on(race(
            &[a, b, c],
            &mut Pacer::new(Duration::from_millis(100), 1),
            Limit::new(Duration::from_millis(200)),
            |_: &&str| Verdict::Answer,
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
    fn a_silent_address_gets_fresh_attempts_and_a_late_one_wins() {
        // One address; the attempts started in the first 300 ms are lost (they hang, as an
        // attempt whose packets went into a blackhole waits out its retransmission timer), the
        // later ones get through at once.
        let a = addr("127.0.0.1:9");
        let t0 = Instant::now();
        let started = RefCell::new(Vec::new());
        let mut pacer = Pacer::new(Duration::from_millis(50), 3);
        let result = smol::block_on(race(
            &[a],
            &mut pacer,
            Limit::new(Duration::from_secs(10)),
            |_: &String| Verdict::Answer,
            |_| {
                let at = t0.elapsed();
                started.borrow_mut().push(at);
                async move {
                    if at < Duration::from_millis(300) {
                        std::future::pending().await
                    } else {
                        Ok(at)
                    }
                }
            },
        ));
        let (won_at, _) = result.expect("a fresh attempt wins");
        let took = t0.elapsed();
        assert!(
            won_at >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "the first attempt after the path returned wins, long before the limit: {took:?}"
        );
        let n = started.borrow().len();
        assert!(n >= 5, "fresh attempts every gap while silent: {n}");
    }

    /// What a race of attempts that never finish showed: when each started, how long each that
    /// was dropped had been pending (superseded ones first, then those dropped at the end), and
    /// the most pending at once.
    struct Silent {
        failed: Failed<String>,
        starts: Vec<Instant>,
        lived: Vec<Duration>,
        most: usize,
    }

    /// Races attempts to one address that never finish, at a base gap of `gap`, for `limit`.
    fn silent_race(gap: Duration, limit: Duration) -> Silent {
        struct Alive<'a>(&'a RefCell<usize>, &'a RefCell<Vec<Duration>>, Instant);
        impl Drop for Alive<'_> {
            fn drop(&mut self) {
                *self.0.borrow_mut() -= 1;
                self.1.borrow_mut().push(self.2.elapsed());
            }
        }
        let alive = RefCell::new(0usize);
        let most = RefCell::new(0usize);
        let lived = RefCell::new(Vec::new());
        let starts = RefCell::new(Vec::new());
        let mut pacer = Pacer::new(gap, 3);
        let failed = smol::block_on(race(
            &[addr("127.0.0.1:9")],
            &mut pacer,
            Limit::new(limit),
            |_: &String| Verdict::Answer,
            |_| async {
                // Counted from the first poll: an attempt does nothing before it.
                starts.borrow_mut().push(Instant::now());
                *alive.borrow_mut() += 1;
                let now = *alive.borrow();
                let m = (*most.borrow()).max(now);
                *most.borrow_mut() = m;
                let _guard = Alive(&alive, &lived, Instant::now());
                std::future::pending::<Result<(), String>>().await
            },
        ))
        .unwrap_err();
        Silent {
            failed,
            starts: starts.into_inner(),
            lived: lived.into_inner(),
            most: most.into_inner(),
        }
    }

    #[test]
    fn no_more_than_max_pending_attempts_are_pending_and_none_goes_before_its_time() {
        // At a 50 ms pace for 3.5 s, KEEP_FOR would keep about 40 attempts pending. Beyond
        // MAX_ALIVE they are spaced by KEEP_FOR / MAX_PENDING; once MAX_PENDING are pending, a
        // fresh one waits until the oldest had its time, and only then abandons it.
        let r = silent_race(Duration::from_millis(50), Duration::from_millis(3500));
        assert_eq!(r.most, MAX_PENDING);
        assert!(r.failed.attempts > MAX_PENDING + 2, "{}", r.failed.attempts);
        let spacing = KEEP_FOR / MAX_PENDING as u32;
        for w in r.starts[MAX_ALIVE - 1..].windows(2) {
            assert!(w[1] - w[0] >= spacing, "{:?} apart", w[1] - w[0]);
        }
        let superseded = &r.lived[..r.lived.len() - MAX_PENDING];
        assert!(!superseded.is_empty(), "{:?}", r.lived);
        for l in superseded {
            assert!(*l >= KEEP_FOR, "dropped after {l:?}: {:?}", r.lived);
        }
    }

    #[test]
    fn the_oldest_pending_attempt_is_dropped_only_after_its_time() {
        // 300-400 ms apart for 4 s: more than MAX_ALIVE are pending while the oldest is younger
        // than KEEP_FOR (a slow path's handshake may still finish), and each dropped before the
        // end had KEEP_FOR at least.
        let r = silent_race(Duration::from_millis(400), Duration::from_secs(4));
        assert!(
            r.most > MAX_ALIVE && r.most <= MAX_PENDING,
            "about KEEP_FOR / gap pending at most: {}",
            r.most
        );
        // The ones dropped at the end are dropped all at once, after those superseded.
        let superseded = &r.lived[..r.lived.len() - r.most.min(r.lived.len())];
        assert!(!superseded.is_empty(), "{:?}", r.lived);
        for l in superseded {
            assert!(*l >= KEEP_FOR, "dropped after {l:?}: {:?}", r.lived);
        }
        assert!(r.failed.attempts > r.most, "{}", r.failed.attempts);
        assert!(r.failed.silent);
        assert_eq!(
            r.failed.to_string(),
            "127.0.0.1:9: no answer within handshake-timeout (4s)",
            "one entry per address, however many attempts"
        );
    }

    #[test]
    fn at_most_ends_a_silent_race_after_that_many_attempts() {
        let (a, b) = (addr("[::1]:9"), addr("127.0.0.1:9"));
        let n = RefCell::new(0usize);
        let mut pacer = Pacer::new(Duration::from_millis(20), 3);
        let t0 = Instant::now();
        let failed = smol::block_on(race(
            &[a, b],
            &mut pacer,
            Limit::new(Duration::from_millis(500)).with_attempts(3),
            |_: &String| Verdict::Answer,
            |_| {
                *n.borrow_mut() += 1;
                std::future::pending::<Result<(), String>>()
            },
        ))
        .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!((*n.borrow(), failed.attempts, failed.silent), (3, 3, true));
    }

    #[test]
    fn attempts_past_at_most_may_still_answer_within_the_time_limit() {
        // Three attempts 20 ms apart, each answering after 300 ms, as a handshake over a long
        // path does: the race waits for them rather than giving up after the third start.
        let a = addr("127.0.0.1:9");
        let mut pacer = Pacer::new(Duration::from_millis(20), 3);
        let won = smol::block_on(race(
            &[a],
            &mut pacer,
            Limit::new(Duration::from_secs(5)).with_attempts(3),
            |_: &String| Verdict::Silence,
            |_| async {
                smol::Timer::after(Duration::from_millis(300)).await;
                Ok::<_, String>(())
            },
        ));
        assert!(won.is_ok(), "{:?}", won.err().map(|f| f.to_string()));
    }

    #[test]
    fn an_answer_is_not_silence() {
        let (a, b) = (addr("[::1]:9"), addr("127.0.0.1:9"));
        let (won, _) = run(
            &[(a, Fake::Fail(5)), (b, Fake::Fail(5))],
            Duration::from_millis(20),
        );
        assert!(won.is_err());
        let mut pacer = Pacer::new(Duration::from_millis(20), 3);
        let failed = smol::block_on(race(
            &[a, b],
            &mut pacer,
            Limit::new(Duration::from_millis(300)),
            |e: &String| {
                if e == "silent" {
                    Verdict::Silence
                } else {
                    Verdict::Answer
                }
            },
            |x| async move {
                Err::<(), String>(if x == a {
                    "silent".into()
                } else {
                    "reset".into()
                })
            },
        ))
        .unwrap_err();
        assert!(!failed.silent, "one address answered");
    }

    /// The gaps a pacer draws when each attempt starts as soon as it is due, for `n` attempts
    /// from `t0`, with when each attempt started.
    fn schedule(p: &mut Pacer, t0: Instant, n: usize) -> Vec<(Duration, Duration)> {
        let mut now = t0;
        (0..n)
            .map(|_| {
                p.started(now);
                let gap = p.due() - now;
                let at = now - t0;
                now = p.due();
                (at, gap)
            })
            .collect()
    }

    #[test]
    fn the_pace_is_two_round_trips_for_the_fast_phase_then_grows_to_the_cap() {
        assert_eq!(Pacer::base_for(Duration::from_millis(10)), MIN_GAP);
        assert_eq!(
            Pacer::base_for(Duration::from_millis(120)),
            Duration::from_millis(240)
        );
        assert_eq!(Pacer::base_for(Duration::from_secs(3)), MAX_GAP);
        let mut p = Pacer::new(ATTEMPT_DELAY, 5);
        p.link_opened(Some(Duration::from_millis(50)));
        let t0 = Instant::now();
        let gaps = schedule(&mut p, t0, 800);
        let fast: Vec<_> = gaps.iter().filter(|(at, _)| *at < FAST_FOR).collect();
        // 600 to 800 attempts in the first minute, each within two round trips of the last.
        assert!(fast.len() > 600, "{}", fast.len());
        for (at, g) in &fast {
            assert!(
                *g >= Duration::from_millis(75) && *g <= Duration::from_millis(100),
                "{g:?} at {at:?}"
            );
        }
        let slow: Vec<_> = gaps[fast.len()..].iter().map(|(_, g)| *g).collect();
        assert!(slow[0] > Duration::from_millis(100), "{:?}", slow[0]);
        assert!(slow.windows(2).take(5).all(|w| w[1] > w[0]), "{slow:?}");
        for g in &slow[10..] {
            assert!(*g >= MAX_GAP.mul_f64(0.75) && *g <= MAX_GAP, "{g:?}");
        }
        p.link_opened(None);
        let again = schedule(&mut p, t0, 3);
        assert!(
            again.iter().all(|(_, g)| *g <= Duration::from_millis(100)),
            "a link starts the fast phase again: {again:?}"
        );
    }

    #[test]
    fn the_fast_phase_is_configurable_and_an_answer_starts_it_again() {
        let mut p = Pacer::new(Duration::from_millis(100), 5).with_fast_for(Duration::from_secs(1));
        let t0 = Instant::now();
        let gaps = schedule(&mut p, t0, 30);
        let fast = gaps
            .iter()
            .filter(|(at, _)| *at < Duration::from_secs(1))
            .count();
        assert!((10..=14).contains(&fast), "{fast}");
        assert!(gaps[29].1 >= MAX_GAP.mul_f64(0.75), "{:?}", gaps[29]);
        // An answer means the path is there: a silence after it is a new one.
        let now = t0 + gaps[29].0 + gaps[29].1;
        p.answered();
        p.started(now);
        assert!(p.due() - now <= Duration::from_millis(100));
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
