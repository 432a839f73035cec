//! Noticing that credential files changed, by polling their metadata.
//!
//! Polling rather than inotify: a Kubernetes secret or certbot renews by pointing a symlink
//! (`..data`, `live/`) at a new directory, which a watch on the files themselves never sees, and
//! a watch on every directory along the way is fragile; inotify also misses changes made on
//! another machine of a network file system. A few `stat` calls every [`POLL`] cost nothing, need
//! no new dependency, and see every kind of replacement (see [`Stamp`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the files' metadata is looked at: every 2 s.
pub const POLL: Duration = Duration::from_secs(2);

/// What a poll sees of one file, following symlinks: device, inode, size, modification and
/// status change times. Rewriting the file changes its size or times, replacing it (a rename, a
/// symlink pointed elsewhere) its device or inode.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    Seen([i64; 7]),
    /// The file cannot be looked at (missing, no permission).
    Unseen(std::io::ErrorKind),
}

impl Stamp {
    fn of(path: &Path) -> Stamp {
        match std::fs::metadata(path) {
            Ok(m) => Stamp::Seen([
                m.dev() as i64,
                m.ino() as i64,
                m.size() as i64,
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            ]),
            Err(e) => Stamp::Unseen(e.kind()),
        }
    }
}

/// A set of files, as they were when last read, and a change on its way to being read.
#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    /// The files as they were when last read.
    read: Vec<Stamp>,
    /// The files as the last poll saw them, when that differs from `read`.
    settling: Option<Vec<Stamp>>,
}

impl FileWatch {
    /// Watches `paths`, taking them as read now: create it before reading the files.
    pub fn new(paths: Vec<PathBuf>) -> FileWatch {
        let read = paths.iter().map(|p| Stamp::of(p)).collect();
        FileWatch {
            paths,
            read,
            settling: None,
        }
    }

    fn now(&self) -> Vec<Stamp> {
        self.paths.iter().map(|p| Stamp::of(p)).collect()
    }

    /// Takes the files as read now (for a read that did not come from [`poll`](Self::poll), such
    /// as one on SIGHUP): call just before reading them.
    pub fn reading(&mut self) {
        self.read = self.now();
        self.settling = None;
    }

    /// Call every [`POLL`]. Returns which files changed (in the order given to
    /// [`new`](Self::new)) once a change has stayed the same for one more poll, so a file being
    /// written, or a pair replaced one file at a time, is read once it is whole; the files are
    /// then taken as read, and should be read at once. `None` otherwise.
    pub fn poll(&mut self) -> Option<Vec<bool>> {
        let now = self.now();
        if now == self.read {
            self.settling = None;
            return None;
        }
        if self.settling.as_ref() != Some(&now) {
            self.settling = Some(now);
            return None;
        }
        let changed = now.iter().zip(&self.read).map(|(a, b)| a != b).collect();
        self.read = now;
        self.settling = None;
        Some(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_reported_once_it_settled() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "1").unwrap();
        let mut watch = FileWatch::new(vec![a.clone(), b.clone()]);
        assert_eq!(watch.poll(), None, "nothing changed");
        std::fs::write(&b, "22").unwrap();
        assert_eq!(watch.poll(), None, "not settled yet");
        assert_eq!(watch.poll(), Some(vec![false, true]));
        assert_eq!(watch.poll(), None, "reported once");
        // Replaced by a rename: a new inode, whatever the size.
        std::fs::write(dir.path().join("new"), "1").unwrap();
        std::fs::rename(dir.path().join("new"), &a).unwrap();
        assert_eq!(watch.poll(), None);
        std::fs::write(&b, "333").unwrap();
        assert_eq!(watch.poll(), None, "still changing");
        assert_eq!(watch.poll(), Some(vec![true, true]));
        std::fs::remove_file(&a).unwrap();
        watch.reading();
        assert_eq!(watch.poll(), None, "taken as read");
    }
}
