//! Which filesystems the store found full, so that the hub logs once when a disk fills up and
//! once when it has room again, however many queues and state files share that disk.
//!
//! Every store file handle knows the device (`st_dev`) its folder is on ([`Disk`]). A write that
//! fails with `ENOSPC` or `EDQUOT` marks the device full (logging a warning the first time). A
//! later write on that device that succeeds while the filesystem has [`ROOM`] free marks it as
//! having room again (logging that once): the margin keeps a disk on the edge of full, where a
//! small write fits and the next does not, from being reported full and free over and over. The
//! state is process-wide: one line each way for the whole hub, not one per queue.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Devices found full and not written to successfully since.
static FULL: Mutex<Vec<u64>> = Mutex::new(Vec::new());
/// Whether `FULL` is non-empty, so that a successful write costs one atomic load.
static ANY_FULL: AtomicBool = AtomicBool::new(false);

/// Free space that counts as room again after a full disk: a sixteenth of the filesystem, at
/// most this many bytes.
pub(crate) const ROOM: u64 = 16 << 20;

/// Whether `e` says the filesystem (or the user's quota on it) has no room: `ENOSPC`, `EDQUOT`.
pub(crate) fn is_out_of_space(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::NOSPC.raw_os_error())
        || code == Some(rustix::io::Errno::DQUOT.raw_os_error())
}

/// The device one store folder is on, for [`is_out_of_space`] bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Disk(u64);

impl Disk {
    /// The device `dir` is on, or device 0 ("unknown", tracked like any other) when `dir` cannot
    /// be read.
    pub(crate) fn of(dir: &Path) -> Disk {
        Disk(std::fs::metadata(dir).map_or(0, |m| m.dev()))
    }

    /// A disk with a made-up device number, for tests.
    #[cfg(test)]
    pub(crate) fn fake(dev: u64) -> Disk {
        Disk(dev)
    }

    /// Reports that a write to `path` on this disk failed with `e`; returns whether `e` is a
    /// full disk (then it is logged, the first time for this disk).
    pub(crate) fn failed(self, path: &Path, e: &io::Error) -> bool {
        if !is_out_of_space(e) {
            return false;
        }
        let mut full = lock();
        if !full.contains(&self.0) {
            full.push(self.0);
            ANY_FULL.store(true, Ordering::Release);
            ::log::warn!(
                "{}: the disk is full ({e}); new messages are refused until acknowledged ones are reclaimed, and positions are recorded once there is room",
                path.display()
            );
        }
        true
    }

    /// Reports that a write to `path` on this disk succeeded: if the disk was full and now has
    /// [`ROOM`] free (or its free space cannot be read), logs that it has room again.
    pub(crate) fn wrote(self, path: &Path) {
        if !ANY_FULL.load(Ordering::Acquire) {
            return;
        }
        let mut full = lock();
        if let Some(i) = full.iter().position(|&d| d == self.0) {
            if !has_room(path) {
                return;
            }
            full.swap_remove(i);
            ANY_FULL.store(!full.is_empty(), Ordering::Release);
            ::log::info!("{}: the disk has room again", path.display());
        }
    }

    /// Whether a write on this disk failed for lack of space and none succeeded since.
    pub(crate) fn is_full(self) -> bool {
        ANY_FULL.load(Ordering::Acquire) && lock().contains(&self.0)
    }
}

/// Whether the filesystem holding `path` has [`ROOM`] free for unprivileged writers (true when
/// that cannot be read).
fn has_room(path: &Path) -> bool {
    match rustix::fs::statvfs(path) {
        Ok(fs) => {
            let total = fs.f_blocks.saturating_mul(fs.f_frsize);
            fs.f_bavail.saturating_mul(fs.f_frsize) >= (total / 16).min(ROOM)
        }
        Err(_) => true,
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<u64>> {
    FULL.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nospc() -> io::Error {
        io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error())
    }

    #[test]
    fn out_of_space_errors_are_told_apart() {
        assert!(is_out_of_space(&nospc()));
        let quota = io::Error::from_raw_os_error(rustix::io::Errno::DQUOT.raw_os_error());
        assert!(is_out_of_space(&quota));
        let denied = io::Error::from_raw_os_error(rustix::io::Errno::ACCESS.raw_os_error());
        assert!(!is_out_of_space(&denied));
        assert!(!is_out_of_space(&io::Error::other(
            "no room, but not from the kernel"
        )));
    }

    #[test]
    fn a_disk_is_full_from_a_failed_write_until_a_write_succeeds() {
        // Made-up device numbers no real filesystem in the tests has.
        let (a, b) = (Disk::fake(u64::MAX - 1), Disk::fake(u64::MAX - 2));
        let path = Path::new("q");
        assert!(!a.is_full());
        assert!(!a.failed(path, &io::Error::other("not about space")));
        assert!(!a.is_full());
        assert!(a.failed(path, &nospc()));
        assert!(a.failed(path, &nospc()), "still a full disk, logged once");
        assert!(a.is_full() && !b.is_full(), "per device");
        b.wrote(path);
        assert!(a.is_full());
        a.wrote(path);
        assert!(!a.is_full());
    }
}
