//! The process's open-file limit (`RLIMIT_NOFILE`, POSIX `getrlimit`/`setrlimit`).
//!
//! Every link, application connection, queue segment and state file of a hub is a descriptor. A
//! hub started from a shell typically gets a soft limit of 1024 while the hard limit is far
//! higher; a long-running server raises its soft limit to the hard one at start, as the Go
//! runtime and most servers do, and budgets what is left: at its limit `accept` fails, and so do
//! the link's reconnects and the writes of the queues' position files.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Raises the soft open-file limit to the hard one; returns the soft limit in force afterwards
/// (`u64::MAX` when unlimited). A refusal leaves the limit as it was, and is logged.
pub fn raise_limit() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            log::warn!(
                "cannot raise the open-file limit from {} to {}: {e}",
                show(limit.current),
                show(limit.maximum)
            );
        }
    }
    soft_limit()
}

/// The soft open-file limit now (`u64::MAX` when unlimited).
pub fn soft_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// At most how many of `wanted` descriptors one use may take: all of them when the limit leaves
/// room, else `1/share` of the open-file limit. The shares the hub hands out (half for node
/// links, a quarter for application connections, an eighth for MQTT connections) leave an eighth
/// for the listeners, the queues' files and the link of an edge. `what` names the setting for the warning given when it is cut.
pub fn budget(wanted: usize, what: &str, share: u64) -> usize {
    let limit = soft_limit();
    let part = usize::try_from(limit / share.max(1))
        .unwrap_or(usize::MAX)
        .max(1);
    if wanted <= part {
        return wanted;
    }
    log::warn!(
        "{what} is {wanted}, but this process may open only {limit} files: taking at most {part} (raise LimitNOFILE or `ulimit -n`, or lower {what})"
    );
    part
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

/// An accept loop's failures (out of descriptors, most likely): it pauses rather than spin, and
/// logs at most once a second, with how many failed since, so a long shortage is not a log flood.
#[derive(Default)]
pub struct AcceptFailures {
    logged: Option<std::time::Instant>,
    since: u64,
}

impl AcceptFailures {
    /// How long the loop pauses after a failure.
    pub const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

    /// Records a failure of the accept loop for `what`, logs it when a second passed since the
    /// last line, then pauses for [`PAUSE`](Self::PAUSE).
    pub async fn pause(&mut self, what: &str, e: &std::io::Error) {
        self.since += 1;
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1))
        {
            log::warn!(
                "{what} accept failed: {e} ({} time(s) since the last such line)",
                self.since
            );
            self.logged = Some(std::time::Instant::now());
            self.since = 0;
        }
        smol::Timer::after(Self::PAUSE).await;
    }
}
