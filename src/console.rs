//! What the commands write to standard output and standard error, without panicking when the
//! reader went away.
//!
//! A command-line tool ends when its output is gone (`hub sub | head -n 1`): a write to a closed
//! pipe fails with `EPIPE` (Rust ignores `SIGPIPE`), and [`line`] reports that as
//! [`OutputError::Closed`], which ends the command quietly with status 0, as `head` users expect.
//! Any other write error (a full disk behind a redirect) is a failure: one line on standard
//! error, status 1. Standard error itself is written best-effort: when it is gone there is nobody
//! left to tell.

use std::fmt::Display;
use std::io::{self, Write};
use std::process::ExitCode;

/// Why standard output could not be written.
#[derive(Debug)]
pub enum OutputError {
    /// The reader closed the pipe (`EPIPE`): nobody wants more output.
    Closed,
    /// Any other write error.
    Failed(io::Error),
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            OutputError::Closed
        } else {
            OutputError::Failed(e)
        }
    }
}

impl OutputError {
    /// How the command ends: status 0 without a word when the reader closed the pipe; otherwise
    /// the error on standard error and status 1.
    pub fn exit_code(self) -> ExitCode {
        match self {
            OutputError::Closed => ExitCode::SUCCESS,
            OutputError::Failed(e) => {
                warn(format_args!("hub: cannot write to standard output: {e}"));
                ExitCode::from(1)
            }
        }
    }
}

/// Writes `text` and a newline to standard output and flushes, so that a closed pipe shows at
/// once rather than at exit.
pub fn line(text: impl Display) -> Result<(), OutputError> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// Writes `text` as it is (no newline added) to standard output and flushes.
pub fn text(text: &str) -> Result<(), OutputError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Writes `text` and a newline to standard error; a standard error that is gone is ignored.
pub fn warn(text: impl Display) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// Writes `text` as it is to standard error, adding a newline when it has none; a standard error
/// that is gone is ignored.
pub fn warn_text(text: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = err.write_all(b"\n");
    }
}

/// Resolves once the reader of standard output is gone (the other end of the pipe or socket
/// closed), so that a command waiting for input it would print can stop at once, as `tail -f`
/// does. Never resolves for a terminal, a file or `/dev/null`. Polls on a thread of its own.
pub async fn closed() {
    use rustix::event::{PollFd, PollFlags, poll};
    let gone = smol::unblock(|| {
        let stdout = io::stdout();
        loop {
            // No events asked for: poll reports only POLLERR (a pipe's reader closed), POLLHUP
            // (a socket's peer closed) and POLLNVAL.
            let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
            match poll(&mut fds, None) {
                Ok(_) => {
                    let events = fds[0].revents();
                    if events.intersects(PollFlags::ERR | PollFlags::HUP) {
                        return true;
                    }
                    if events.contains(PollFlags::NVAL) {
                        return false; // no standard output at all: writes will say so
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    if !gone {
        std::future::pending::<()>().await;
    }
}
