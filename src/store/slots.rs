//! A tiny state file holding two `u64` values, rewritten in place yet never lost to a torn write.
//!
//! The file has two 32-byte slots, at offsets 0 and 4096 (separate disk blocks):
//! `tag: 4 bytes | generation: u64 LE | a: u64 LE | b: u64 LE | crc32 of the 28 bytes before: u32 LE`.
//! A write goes to the slot of `generation % 2` with a generation one higher than the newest
//! valid slot, so the other slot still holds the previous value; reading takes the valid slot
//! (right tag, right CRC) with the highest generation. One `pwrite` (+ `fdatasync`) per update,
//! no rename.
//!
//! # A full disk
//!
//! The first write to a file shorter than both slots writes the whole 4128-byte image at once
//! (the other slot kept as it was, or zeros), so the file's blocks are allocated from then on
//! and every later update overwrites them in place: on filesystems that overwrite in place (ext4,
//! xfs, tmpfs, ...) recording a position needs no new space, even on a full disk. A
//! write-to-a-temporary-file-and-rename scheme would need a fresh block for every update, exactly
//! when none is left. A write that fails (`ENOSPC` or anything else) leaves the previous value
//! readable in the other slot, and the next write tries the same slot again; a file this write
//! created and could not fill is removed, so no empty file is left behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const SLOT_LEN: usize = 32;
const SLOT_STRIDE: u64 = 4096;
/// The length of a file with both slots.
const FILE_LEN: u64 = SLOT_STRIDE + SLOT_LEN as u64;

/// One small state file (see the module docs).
#[derive(Debug)]
pub(crate) struct SlotFile {
    path: PathBuf,
    tag: [u8; 4],
    file: Option<File>,
    generation: u64,
    /// Both slots' blocks exist in the file (see "A full disk" in the module docs).
    allocated: bool,
    /// The file was created and its directory entry is not synced yet.
    created: bool,
    /// Written since the last sync.
    dirty: bool,
}

impl SlotFile {
    /// Opens `path` (a missing file is fine: it is created by the first write) and returns the
    /// newest valid `(a, b)`, or `None` when the file is missing or holds no valid slot.
    pub(crate) fn open(path: &Path, tag: [u8; 4]) -> io::Result<(SlotFile, Option<(u64, u64)>)> {
        let mut slots = SlotFile {
            path: path.to_owned(),
            tag,
            file: None,
            generation: 0,
            allocated: false,
            created: false,
            dirty: false,
        };
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((slots, None)),
            Err(e) => return Err(e),
        };
        slots.allocated = file.metadata()?.len() >= FILE_LEN;
        let mut best: Option<(u64, u64, u64)> = None;
        for i in 0..2 {
            let mut buf = [0u8; SLOT_LEN];
            if read_full_at(&file, &mut buf, i * SLOT_STRIDE)? < SLOT_LEN {
                continue;
            }
            if let Some(v) = decode(&buf, tag) {
                if best.is_none_or(|b| v.0 > b.0) {
                    best = Some(v);
                }
            }
        }
        drop(file); // reopened by the next write
        Ok(match best {
            Some((generation, a, b)) => {
                slots.generation = generation;
                (slots, Some((a, b)))
            }
            None => (slots, None),
        })
    }

    /// Writes `(a, b)` into the older slot (not synced; see [`SlotFile::sync`]). On an error the
    /// previous value is still what the file holds, and the next write tries the same slot.
    pub(crate) fn write(&mut self, a: u64, b: u64) -> io::Result<()> {
        let mut creating = false;
        if self.file.is_none() {
            let f = match OpenOptions::new().read(true).write(true).open(&self.path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    creating = true;
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&self.path)?
                }
                Err(e) => return Err(e),
            };
            self.file = Some(f);
        }
        let generation = self.generation + 1;
        let buf = encode(self.tag, generation, a, b);
        let at = (generation % 2) * SLOT_STRIDE;
        let file = self.file.as_ref().expect("opened above");
        let written = if self.allocated {
            file.write_all_at(&buf, at)
        } else {
            // Allocate both slots now (see "A full disk"), keeping what the other one holds.
            let mut image = vec![0u8; FILE_LEN as usize];
            read_full_at(file, &mut image, 0).and_then(|_| {
                image[at as usize..at as usize + SLOT_LEN].copy_from_slice(&buf);
                file.write_all_at(&image, 0)
            })
        };
        if let Err(e) = written {
            if creating {
                // Nothing of it is worth keeping: leave no empty file behind.
                self.file = None;
                let _ = std::fs::remove_file(&self.path);
            }
            return Err(e);
        }
        self.created |= creating;
        self.allocated = true;
        self.generation = generation;
        self.dirty = true;
        Ok(())
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the file until the next write (a hub with thousands of queues holds no descriptor
    /// per state file); what was written stays in the page cache and [`sync`](Self::sync) still
    /// reaches it.
    pub(crate) fn release(&mut self) {
        self.file = None;
    }

    /// `fdatasync` of the file, and of its directory when the file was created since the last sync.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            match &self.file {
                Some(f) => super::sync_data(f)?,
                None => super::sync_data(&OpenOptions::new().write(true).open(&self.path)?)?,
            }
            self.dirty = false;
        }
        if self.created {
            sync_parent(&self.path)?;
            self.created = false;
        }
        Ok(())
    }
}

/// `fsync` of the directory holding `path`, so a newly created or renamed entry survives power loss.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns the bytes read.
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn encode(tag: [u8; 4], generation: u64, a: u64, b: u64) -> [u8; SLOT_LEN] {
    let mut buf = [0u8; SLOT_LEN];
    buf[0..4].copy_from_slice(&tag);
    buf[4..12].copy_from_slice(&generation.to_le_bytes());
    buf[12..20].copy_from_slice(&a.to_le_bytes());
    buf[20..28].copy_from_slice(&b.to_le_bytes());
    let crc = crc32fast::hash(&buf[..28]);
    buf[28..32].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn decode(buf: &[u8; SLOT_LEN], tag: [u8; 4]) -> Option<(u64, u64, u64)> {
    let word = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(buf[28..32].try_into().expect("4 bytes"));
    if buf[0..4] != tag || crc32fast::hash(&buf[..28]) != crc || word(4) == 0 {
        return None;
    }
    Some((word(4), word(12), word(20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: [u8; 4] = *b"TEST";

    fn reopen(path: &Path) -> Option<(u64, u64)> {
        SlotFile::open(path, TAG).unwrap().1
    }

    #[test]
    fn keeps_the_newest_value_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let (mut s, v) = SlotFile::open(&path, TAG).unwrap();
        assert_eq!(v, None);
        assert!(!path.exists(), "opening must not create the file");
        for i in 1..=5u64 {
            s.write(i, i * 10).unwrap();
            s.sync().unwrap();
            assert_eq!(reopen(&path), Some((i, i * 10)));
        }
        // Writing after a reopen continues from the newest generation.
        let (mut s, _) = SlotFile::open(&path, TAG).unwrap();
        s.write(6, 60).unwrap();
        assert_eq!(reopen(&path), Some((6, 60)));
    }

    #[test]
    fn a_damaged_newest_slot_falls_back_to_the_previous_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let (mut s, _) = SlotFile::open(&path, TAG).unwrap();
        s.write(1, 1).unwrap();
        s.write(2, 2).unwrap(); // generation 2: slot 0
        s.write(3, 3).unwrap(); // generation 3: slot 1
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT_STRIDE as usize + 14] ^= 0x40; // flip a bit in the value of slot 1
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(reopen(&path), Some((2, 2)));
        // Torn: slot 1 cut short.
        std::fs::write(&path, &bytes[..SLOT_STRIDE as usize + 10]).unwrap();
        assert_eq!(reopen(&path), Some((2, 2)));
        // The wrong kind of file is no state at all.
        let (_, v) = SlotFile::open(&path, *b"ELSE").unwrap();
        assert_eq!(v, None);
    }

    use crate::store::space::is_out_of_space;
    use crate::store::testfs::{fill, on_small_fs};

    #[test]
    fn once_written_a_slot_file_is_updated_in_place_on_a_full_disk() {
        on_small_fs(
            "store::slots::tests::once_written_a_slot_file_is_updated_in_place_on_a_full_disk",
            "256k",
            |root| {
                let path = root.join("state");
                let (mut s, _) = SlotFile::open(&path, TAG).unwrap();
                s.write(1, 10).unwrap();
                s.sync().unwrap();
                s.release();
                let filler = fill(root);
                // The first write allocated both slots: updates need no new space.
                for i in 2..=5u64 {
                    s.write(i, i * 10).unwrap();
                    s.release();
                    assert_eq!(reopen(&path), Some((i, i * 10)));
                }

                // A new file finds no room: the write fails and leaves no file behind, and
                // succeeds once there is room.
                let other = root.join("other");
                let (mut o, _) = SlotFile::open(&other, TAG).unwrap();
                let e = o.write(7, 70).unwrap_err();
                assert!(is_out_of_space(&e), "{e}");
                assert!(!other.exists());
                std::fs::remove_file(filler).unwrap();
                o.write(7, 70).unwrap();
                assert_eq!(reopen(&other), Some((7, 70)));
            },
        );
    }

    #[test]
    fn a_write_that_finds_no_room_leaves_the_previous_value_and_is_retried() {
        on_small_fs(
            "store::slots::tests::a_write_that_finds_no_room_leaves_the_previous_value_and_is_retried",
            "256k",
            |root| {
                // A file whose first slot was never allocated (a hole), as older versions left
                // it: the next value goes there and needs a new block.
                let path = root.join("state");
                let f = File::create(&path).unwrap();
                f.write_all_at(&encode(TAG, 1, 1, 10), SLOT_STRIDE).unwrap();
                drop(f);
                let filler = fill(root);
                let (mut s, v) = SlotFile::open(&path, TAG).unwrap();
                assert_eq!(v, Some((1, 10)));
                let e = s.write(2, 20).unwrap_err();
                assert!(is_out_of_space(&e), "{e}");
                assert_eq!(reopen(&path), Some((1, 10)), "the previous value is intact");
                std::fs::remove_file(filler).unwrap();
                s.write(2, 20).unwrap();
                s.write(3, 30).unwrap();
                assert_eq!(reopen(&path), Some((3, 30)));
            },
        );
    }
}
