//! [`RecvState`]: how far the receiving side has processed one inbound stream.

use std::io;
use std::path::{Path, PathBuf};

use super::slots::SlotFile;
use super::space::Disk;

const TAG: [u8; 4] = *b"RECV";

/// The receiving side's durable state for one inbound stream: the sender's stream id
/// ([`Log::stream_id`](super::Log::stream_id)) and the highest sequence number processed, so
/// records delivered again after a reconnect are recognised as duplicates.
///
/// Stored as a slot file (format in [`store::log`](super::log); tag `RECV`, `a` = stream,
/// `b` = seq): each save rewrites one of two slots in place, so a torn or failed save leaves the
/// previous value, never garbage, and once the file exists a save needs no new disk space. A
/// file with no valid slot reads as `(0, 0)`: the next records are taken as new (duplicates are
/// possible, losses are not).
#[derive(Debug)]
pub struct RecvState {
    file: SlotFile,
    path: PathBuf,
    disk: Disk,
    stream: u64,
    seq: u64,
    /// The newest value could not be written yet; the next save (or the drop) writes it.
    unsaved: bool,
}

impl RecvState {
    /// Reads the state at `path`; a missing file is `(0, 0)` (created by the first save).
    pub fn open(path: &Path) -> io::Result<RecvState> {
        let (file, value) = SlotFile::open(path, TAG)?;
        if value.is_none() && path.exists() {
            ::log::warn!(
                "{}: no valid receive state; treating the stream as new",
                path.display()
            );
        }
        let (stream, seq) = value.unwrap_or((0, 0));
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok(RecvState {
            file,
            path: path.to_owned(),
            disk: Disk::of(folder),
            stream,
            seq,
            unsaved: false,
        })
    }

    /// `(stream id, highest sequence number processed)` as last given to
    /// [`save`](Self::save) (even if not on disk yet); `(0, 0)` when nothing was saved.
    pub fn get(&self) -> (u64, u64) {
        (self.stream, self.seq)
    }

    /// Whether the value of the last [`save`](Self::save) is still only in memory (the disk was
    /// full, or the write failed).
    pub fn unsaved(&self) -> bool {
        self.unsaved
    }

    /// Persists `(stream, seq)` with one in-place write; `fdatasync`s (and, the first time, syncs
    /// the directory entry) when `sync` is true.
    ///
    /// A full disk (`ENOSPC`, `EDQUOT`) is not an error: the file keeps the previous value, the
    /// store logs the full disk once for the whole hub, and the next save (or dropping the
    /// state) writes the newest value. Any other I/O error is returned, with the same retry.
    pub fn save(&mut self, stream: u64, seq: u64, sync: bool) -> io::Result<()> {
        self.stream = stream;
        self.seq = seq;
        self.unsaved = true;
        let result = self
            .file
            .write(stream, seq)
            .and_then(|()| if sync { self.file.sync() } else { Ok(()) });
        self.file.release();
        match result {
            Ok(()) => {
                self.unsaved = false;
                self.disk.wrote(&self.path);
                Ok(())
            }
            Err(e) if self.disk.failed(&self.path, &e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for RecvState {
    /// Writes (without a sync) a value a full disk held back, if there is room by now.
    fn drop(&mut self) {
        if self.unsaved {
            let (stream, seq) = (self.stream, self.seq);
            if let Err(e) = self.save(stream, seq, false) {
                ::log::warn!("{}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge-1.recv");
        let mut st = RecvState::open(&path).unwrap();
        assert_eq!(st.get(), (0, 0));
        st.save(0xfeed, 10, true).unwrap();
        st.save(0xfeed, 11, false).unwrap();
        assert_eq!(st.get(), (0xfeed, 11));
        assert_eq!(RecvState::open(&path).unwrap().get(), (0xfeed, 11));
        // A new stream may start over at a lower seq.
        st.save(0xbeef, 1, true).unwrap();
        drop(st);
        let mut st = RecvState::open(&path).unwrap();
        assert_eq!(st.get(), (0xbeef, 1));
        st.save(0xbeef, 2, true).unwrap();
        assert_eq!(RecvState::open(&path).unwrap().get(), (0xbeef, 2));
    }

    #[test]
    fn a_torn_or_corrupt_save_leaves_the_previous_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let mut st = RecvState::open(&path).unwrap();
        st.save(7, 100, true).unwrap(); // slot 1
        st.save(7, 200, true).unwrap(); // slot 0
        let good = std::fs::read(&path).unwrap();

        // The last save (slot 0) torn half way.
        let mut torn = good.clone();
        torn[16..32].fill(0);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(RecvState::open(&path).unwrap().get(), (7, 100));

        // A flipped bit in the newest slot.
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let mut st = RecvState::open(&path).unwrap();
        assert_eq!(st.get(), (7, 100));
        // Saving again goes over the damaged slot and is read back.
        st.save(7, 300, false).unwrap();
        assert_eq!(RecvState::open(&path).unwrap().get(), (7, 300));
    }

    #[test]
    fn garbage_reads_as_a_new_stream_and_missing_dirs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::write(&path, vec![0xa5; 8192]).unwrap();
        assert_eq!(RecvState::open(&path).unwrap().get(), (0, 0));
        std::fs::write(&path, b"").unwrap();
        let mut st = RecvState::open(&path).unwrap();
        assert_eq!(st.get(), (0, 0));
        st.save(1, 1, true).unwrap();
        assert_eq!(RecvState::open(&path).unwrap().get(), (1, 1));

        let mut st = RecvState::open(&dir.path().join("no/such/dir/state")).unwrap();
        assert!(st.save(1, 1, true).is_err());
    }

    use crate::store::testfs::{fill, on_small_fs};

    #[test]
    fn a_full_disk_holds_a_save_back_until_there_is_room() {
        on_small_fs(
            "store::recv::tests::a_full_disk_holds_a_save_back_until_there_is_room",
            "256k",
            |root| {
                let path = root.join("in.state");
                let filler = fill(root);
                let mut st = RecvState::open(&path).unwrap();
                // No room: not an error, the value is held.
                st.save(9, 1, true).unwrap();
                st.save(9, 2, false).unwrap();
                assert!(st.unsaved());
                assert_eq!(st.get(), (9, 2));
                assert!(!path.exists(), "no empty file left behind");
                std::fs::remove_file(filler).unwrap();
                st.save(9, 3, true).unwrap();
                assert!(!st.unsaved());
                assert_eq!(RecvState::open(&path).unwrap().get(), (9, 3));

                // A value still held back when the state is dropped is written then.
                let other = root.join("other.state");
                let filler = fill(root);
                let mut st = RecvState::open(&other).unwrap();
                st.save(5, 50, false).unwrap();
                assert!(st.unsaved());
                std::fs::remove_file(filler).unwrap();
                drop(st);
                assert_eq!(RecvState::open(&other).unwrap().get(), (5, 50));
            },
        );
    }
}
