//! Durable queues on local disk: the segment [`Log`] behind the edge's outbox and the cloud's
//! per-node queues, its [`Reader`] cursors, and [`RecvState`], the receiving side's record of
//! how far one inbound stream was processed.
//!
//! Everything here is synchronous `std::fs` code: callers run it on a blocking thread (e.g.
//! `smol::unblock`). The on-disk format is described in [`log`].
//!
//! Sequence numbers start at 1 and count up within one stream id; 0 means "none".

use std::fmt;
use std::io;
use std::str::FromStr;

pub mod log;
mod reader;
mod recv;
mod segment;
mod slots;
mod space;
#[cfg(test)]
pub(crate) mod testfs;

pub use self::log::Log;
pub use self::reader::Reader;
pub use self::recv::RecvState;

/// Largest segment file the log writes, in bytes; a single record larger than this gets a segment
/// of its own. A smaller `max_bytes` limit or a smaller filesystem gets smaller segments (an
/// eighth of the smaller of the two, at least [`MIN_SEGMENT_BYTES`]), so acknowledged data stuck
/// in a half-read segment never holds more than about an eighth of the budget or of the disk.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// Smallest segment size the log picks for a small `max_bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;

/// Largest payload of one record, in bytes.
pub const MAX_RECORD: usize = 64 << 20;

/// Bytes each record takes on disk besides its payload (length, checksum, sequence number).
pub const RECORD_OVERHEAD: u64 = 16;

/// When appended records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Every [`Log::append`] and [`Log::ack`] returns only after `fdatasync`: an appended record
    /// survives power loss.
    Always,
    /// Nothing is synced inline; the caller calls [`Log::sync`] periodically (e.g. every second),
    /// so power loss loses at most the records appended since. Segment files are synced when the
    /// log moves on to the next one.
    Periodic,
    /// Never synced by the log (only an explicit [`Log::sync`]): survives the process being
    /// killed, not power loss.
    Never,
}

impl Fsync {
    /// The name used in configuration files and logs.
    pub fn name(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Periodic => "periodic",
            Fsync::Never => "never",
        }
    }
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing an [`Fsync`] policy from a string that names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFsync(pub String);

impl fmt::Display for UnknownFsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown fsync policy {:?} (expected always, periodic or never)",
            self.0
        )
    }
}

impl std::error::Error for UnknownFsync {}

impl FromStr for Fsync {
    type Err = UnknownFsync;

    fn from_str(s: &str) -> Result<Fsync, UnknownFsync> {
        match s {
            "always" => Ok(Fsync::Always),
            "periodic" => Ok(Fsync::Periodic),
            "never" => Ok(Fsync::Never),
            _ => Err(UnknownFsync(s.to_owned())),
        }
    }
}

/// Bounds of one log. An append that would exceed either is refused with [`AppendError::Full`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Unacknowledged records at most.
    pub max_messages: u64,
    /// Bytes of segment files on disk at most (payloads plus [`RECORD_OVERHEAD`] per record,
    /// including acknowledged records whose segment is not yet deleted).
    pub max_bytes: u64,
}

impl Limits {
    /// No bounds at all.
    pub const UNLIMITED: Limits = Limits {
        max_messages: u64::MAX,
        max_bytes: u64::MAX,
    };
}

/// `fdatasync(2)` of `file`, timed into `hub_queue_fsync_duration_seconds`
/// ([`crate::metrics::Metrics::fsync`]).
pub(crate) fn sync_data(file: &std::fs::File) -> io::Result<()> {
    let start = std::time::Instant::now();
    let result = file.sync_data();
    crate::metrics::METRICS
        .fsync
        .observe_duration(start.elapsed());
    result
}

/// Why [`Log::append`] refused a batch. Nothing of the batch was written in every case.
#[derive(Debug)]
pub enum AppendError {
    /// The batch would exceed [`Limits`]; retry after acknowledgements. Carries the log's
    /// unacknowledged records and bytes on disk at the time.
    Full {
        /// Unacknowledged records in the log.
        messages: u64,
        /// Bytes of segment files on disk.
        bytes: u64,
    },
    /// The disk is full (`ENOSPC`, `EDQUOT`); the batch was rolled back. Retry once
    /// acknowledgements have freed space: the log reclaims it by itself.
    NoSpace(io::Error),
    /// Writing (or syncing) failed for another reason; the batch was rolled back.
    Io(io::Error),
    /// A record of this many bytes can never be stored: it exceeds [`MAX_RECORD`] or, with its
    /// overhead, `max_bytes`.
    TooLarge(usize),
}

impl fmt::Display for AppendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppendError::Full { messages, bytes } => write!(
                f,
                "queue full ({messages} unacknowledged messages, {bytes} bytes on disk)"
            ),
            AppendError::NoSpace(e) => write!(f, "the disk is full ({e})"),
            AppendError::Io(e) => write!(f, "queue write failed: {e}"),
            AppendError::TooLarge(n) => {
                write!(f, "message of {n} bytes is larger than the queue can hold")
            }
        }
    }
}

impl std::error::Error for AppendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AppendError::Io(e) | AppendError::NoSpace(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for AppendError {
    fn from(e: io::Error) -> AppendError {
        AppendError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_and_readers_can_move_to_blocking_threads() {
        fn send<T: Send + 'static>() {}
        send::<Log>();
        send::<Reader>();
        send::<RecvState>();
        send::<AppendError>();
    }

    #[test]
    fn fsync_names_round_trip() {
        for f in [Fsync::Always, Fsync::Periodic, Fsync::Never] {
            assert_eq!(f.to_string().parse::<Fsync>(), Ok(f));
        }
        assert_eq!("always".parse::<Fsync>(), Ok(Fsync::Always));
        let err = "sometimes".parse::<Fsync>().unwrap_err();
        assert!(err.to_string().contains("\"sometimes\""), "{err}");
    }

    #[test]
    fn append_errors_read_as_sentences() {
        let full = AppendError::Full {
            messages: 3,
            bytes: 99,
        };
        assert_eq!(
            full.to_string(),
            "queue full (3 unacknowledged messages, 99 bytes on disk)"
        );
        assert!(AppendError::TooLarge(7).to_string().contains("7 bytes"));
        let io = AppendError::from(io::Error::other("disk on fire"));
        assert!(io.to_string().contains("disk on fire"));
        let nospc = io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        let full = AppendError::NoSpace(nospc).to_string();
        assert!(full.starts_with("the disk is full ("), "{full}");
    }
}
