//! The segment log: a durable, bounded FIFO of opaque records numbered 1, 2, 3, …
//!
//! # On-disk format
//!
//! A log is one directory (created with mode 0700; files are 0600) holding:
//!
//! - `stream`: the log's stream id, a random non-zero u64 chosen when the log was created, so a
//!   receiver can tell a new log (a wiped gateway) from the one it knew. A slot file (below), tag
//!   `STRM`, `a` = the id, `b` = 0.
//! - `acked`: the highest acknowledged sequence number. A slot file, tag `ACKD`, `a` = acked,
//!   `b` = 0. Missing or unreadable means "everything before the oldest segment".
//! - segments `<first>.seg`, `<first>` being the sequence number of the segment's first record in
//!   20 decimal digits (`00000000000000000001.seg`), so names sort by sequence number. A segment
//!   is a plain concatenation of records, written only at its end:
//!
//!   ```text
//!   len: u32 LE | crc: u32 LE | seq: u64 LE | payload: len bytes
//!   ```
//!
//!   `crc` is CRC-32 (IEEE, as zlib) of `seq` (8 bytes LE) followed by the payload; `len` is at
//!   most 64 MiB. Within a segment `seq` counts up by one from `<first>`; the next segment starts
//!   where the previous one ends (a gap is possible only after recovery discarded damaged
//!   records, or after [`Log::skip_to`]; an empty segment before the newest one may remain until
//!   acknowledged). A segment is at most 8 MiB (less for a small `max_bytes` or a small
//!   filesystem, see [`SEGMENT_BYTES`](super::SEGMENT_BYTES)), except that a single larger record
//!   gets a segment of its own. The newest segment always exists, possibly empty: its name is
//!   what keeps the numbering going once everything before it was deleted.
//!
//! A slot file is two 32-byte slots at offsets 0 and 4096,
//! `tag: 4 bytes | generation: u64 LE | a: u64 LE | b: u64 LE | crc: u32 LE` (`crc` is CRC-32 of the
//! 28 bytes before it); the valid slot with the highest generation counts. Updates alternate
//! between the slots, so a torn update leaves the previous value readable.
//!
//! # Recovery
//!
//! Opening scans every segment, checking each record's length, sequence number and CRC. A segment
//! is cut at its first bad record (a torn tail after a crash, or damage); records after the cut
//! in that segment are gone, later segments are kept (leaving a gap in the numbering, which
//! readers skip). `next_seq` follows the last good record, but never falls to or below `acked`:
//! acknowledged numbers are not handed out again.
//!
//! # Durability
//!
//! A killed process loses nothing that [`Log::append`] accepted, whatever the [`Fsync`] policy
//! (the data is in the page cache). Power loss loses nothing under [`Fsync::Always`]; under
//! [`Fsync::Periodic`] it loses what was appended since the last [`Log::sync`], under
//! [`Fsync::Never`] whatever the kernel had not written. Records lost that way may already have
//! reached a receiver; their numbers are then handed out again unless the sender, told by its
//! peer how far it got, calls [`Log::skip_to`].
//!
//! The `acked` file is never synced on its own (only by [`Log::sync`]): after a power loss it may
//! say less than was acknowledged, and the records in between are sent again. Receivers drop them
//! as repeats (they resume from their own position), so a sync per acknowledgement would buy
//! nothing but an `fdatasync` each time.
//!
//! # A full disk
//!
//! The log gets out of a full disk (`ENOSPC`, `EDQUOT`) by itself, as acknowledgements come in:
//!
//! - An append that finds no room is refused whole ([`AppendError::NoSpace`]) and rolled back;
//!   what was accepted before stays and is read and acknowledged as usual.
//! - Acknowledged space is reclaimed whatever the segment size: segments all of whose records
//!   are acknowledged are deleted, and once every record is acknowledged the active segment is
//!   replaced by an empty one (named after `next_seq`, so the numbering survives) as soon as it
//!   holds an eighth of a segment, or whatever it holds while the disk is short of space.
//!   Segments are at most an eighth of the filesystem, so acknowledged records waiting in a
//!   half-read segment never hold more than that.
//! - `acked` is a slot file updated in place, so a failed write leaves the previous value. The
//!   position is kept in memory and written again by the next [`Log::ack`], [`Log::append`] or
//!   [`Log::sync`], and at once when reclaiming freed space. Deleting segments needs no space and
//!   is itself a record: on reopening, everything before the oldest segment counts as
//!   acknowledged.
//! - A new log whose `stream` file cannot be written opens all the same; the file is written
//!   before the first record is appended (appends are refused until it is).
//! - The full disk is logged once for the whole hub, and once when a write succeeds again
//!   (`space.rs`).
//!
//! # Costs
//!
//! Memory is O(number of segments) (16 bytes each) plus one write buffer; records are never
//! indexed. Opening reads the whole backlog once. An append is one `write` per segment touched.

use std::collections::VecDeque;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::reader::Reader;
use super::segment;
use super::slots::SlotFile;
use super::space::Disk;
use super::{
    AppendError, Fsync, Limits, MAX_RECORD, MIN_SEGMENT_BYTES, RECORD_OVERHEAD, SEGMENT_BYTES,
};

const STREAM_TAG: [u8; 4] = *b"STRM";
const ACKED_TAG: [u8; 4] = *b"ACKD";

/// The write buffer is cut back to this after a larger batch.
const KEEP_BUFFER: usize = 1 << 20;

/// One segment file as the log tracks it.
#[derive(Debug, Clone, Copy)]
struct Segment {
    first: u64,
    size: u64,
}

/// What still needs an `fdatasync` (policies other than [`Fsync::Always`]).
#[derive(Debug, Default)]
struct Dirty {
    active: bool,
    dir: bool,
    acked: bool,
}

/// A durable, bounded queue of records in one directory (format in the module docs).
///
/// All mutation takes `&mut self`: share a log between threads behind a `Mutex`. Reading goes
/// through [`Reader`]s, which have their own file handles and need no lock: a reader only reads
/// records below the `visible` bound its caller got from [`Log::next_seq`] after an append.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    limits: Limits,
    fsync: Fsync,
    segment_max: u64,
    stream_id: u64,
    /// Oldest first; never empty; the last one is the active segment.
    segments: VecDeque<Segment>,
    /// The active segment's file, opened when it is first written to (and let go when a drained
    /// queue starts an empty segment): an idle queue holds no descriptor, which matters to a
    /// cloud with thousands of idle nodes, two queues each.
    active: Option<File>,
    next_seq: u64,
    acked: u64,
    bytes: u64,
    acked_file: SlotFile,
    /// `acked` is ahead of what the `acked` file holds (its last write failed).
    acked_unsaved: bool,
    stream_file: SlotFile,
    /// The `stream` file could not be written yet: no record may be appended before it is.
    stream_unsaved: bool,
    /// The device the log is on, for logging a full disk once.
    disk: Disk,
    /// A write of this log failed for lack of space and no append succeeded since.
    short_of_space: bool,
    buf: Vec<u8>,
    dirty: Dirty,
    /// A failed append could not be rolled back: the active segment's end is unknown.
    broken: bool,
}

impl Log {
    /// Opens (creating if missing, mode 0700) the log in `dir`, recovering after a crash: scans
    /// segments, checks each record's CRC, cuts a segment at its first bad or torn record, so
    /// `next_seq` follows the last good record. Fails only on I/O errors; a full disk is not one
    /// unless it keeps the folder or its newest (empty) segment from being created.
    pub fn open(dir: &Path, limits: Limits, fsync: Fsync) -> io::Result<Log> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let dir_file = File::open(dir)?;
        let disk = Disk::of(dir);
        let mut segments = recover_segments(dir, fsync)?;

        let (acked_file, stored) = SlotFile::open(&dir.join("acked"), ACKED_TAG)?;
        let stored_acked = stored.map(|(a, _)| a);
        // Only fully acknowledged segments are ever deleted.
        let floor = segments.front().map_or(0, |s| s.0.first - 1);
        let end = segments.back().map_or(1, |s| s.0.first + s.1);
        let acked = stored_acked.unwrap_or(0).max(floor);
        let next_seq = end.max(acked + 1);
        if next_seq > end && !segments.is_empty() {
            ::log::warn!(
                "{}: records {end}..{next_seq} were acknowledged but are missing; numbering continues after them",
                dir.display()
            );
        }

        let stream_path = dir.join("stream");
        let (mut stream_file, stream) = SlotFile::open(&stream_path, STREAM_TAG)?;
        let mut stream_unsaved = false;
        let stream_id = match stream {
            // With neither segments nor acked state, numbering restarts at 1: only a fresh id
            // keeps a receiver from taking the new records for ones it already has.
            Some((id, _)) if id != 0 && (!segments.is_empty() || stored_acked.is_some()) => id,
            _ => {
                if stream.is_some() || segments.iter().any(|s| s.1 > 0) {
                    ::log::warn!(
                        "{}: stream id missing or unreadable; starting a new stream",
                        dir.display()
                    );
                }
                let id = random_id();
                let written = stream_file.write(id, 0).and_then(|()| stream_file.sync());
                stream_file.release(); // no descriptor held per log
                match written {
                    Ok(()) => {}
                    // Written before the first append (which is refused until then).
                    Err(e) if disk.failed(&stream_path, &e) => stream_unsaved = true,
                    Err(e) => return Err(e),
                }
                id
            }
        };

        if segments.back().is_none_or(|s| s.0.first + s.1 < next_seq) {
            create_segment(dir, next_seq)?;
            if fsync != Fsync::Never {
                dir_file.sync_all()?;
            }
            segments.push_back((
                Segment {
                    first: next_seq,
                    size: 0,
                },
                0,
            ));
        }
        let segments: VecDeque<Segment> = segments.into_iter().map(|(s, _)| s).collect();
        let room =
            rustix::fs::statvfs(dir).map_or(u64::MAX, |fs| fs.f_blocks.saturating_mul(fs.f_frsize));
        let mut log = Log {
            dir: dir.to_owned(),
            limits,
            fsync,
            segment_max: (limits.max_bytes.min(room) / 8).clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES),
            stream_id,
            bytes: segments.iter().map(|s| s.size).sum(),
            segments,
            active: None,
            next_seq,
            acked,
            acked_file,
            acked_unsaved: false,
            stream_file,
            stream_unsaved,
            disk,
            short_of_space: stream_unsaved,
            buf: Vec::new(),
            dirty: Dirty::default(),
            broken: false,
        };
        log.reclaim()?;
        Ok(log)
    }

    /// The bounds this log was opened with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Random non-zero u64 chosen when the log was created (persisted in the dir), so a receiver
    /// can tell a fresh log (e.g. a wiped gateway) from the one it knew.
    pub fn stream_id(&self) -> u64 {
        self.stream_id
    }

    /// Appends a batch, each record whole or not at all, in one write per segment file touched;
    /// returns the sequence number of the first record (the others follow consecutively; an
    /// empty batch returns `next_seq` and writes nothing).
    ///
    /// Refuses the whole batch, writing nothing, with [`AppendError::Full`] if it would exceed
    /// `max_messages` unacknowledged records or `max_bytes` on disk, with
    /// [`AppendError::TooLarge`] if one record never fits. On an I/O error the batch is rolled
    /// back. With [`Fsync::Always`] it `fdatasync`s each file written (and the directory when a
    /// segment was created) before returning.
    pub fn append(&mut self, records: &[&[u8]]) -> Result<u64, AppendError> {
        self.append_with(records, true)
    }

    /// [`append`](Self::append) for records not worth a sync of their own (requests and
    /// responses, which end with their requester's connection anyway): under [`Fsync::Always`]
    /// the `fdatasync` is left to the next durable append or segment change, unless this batch
    /// created a segment. Other policies behave as with [`append`](Self::append).
    pub fn append_unsynced(&mut self, records: &[&[u8]]) -> Result<u64, AppendError> {
        self.append_with(records, false)
    }

    fn append_with(&mut self, records: &[&[u8]], durable: bool) -> Result<u64, AppendError> {
        if self.broken {
            return Err(AppendError::Io(io::Error::other(
                "an earlier write failed and could not be undone; reopen the log",
            )));
        }
        let first = self.next_seq;
        if records.is_empty() {
            return Ok(first);
        }
        if self.stream_unsaved {
            let written = self
                .stream_file
                .write(self.stream_id, 0)
                .and_then(|()| self.stream_file.sync());
            self.stream_file.release();
            match written {
                Ok(()) => self.stream_unsaved = false,
                Err(e) if self.disk.failed(self.stream_file.path(), &e) => {
                    self.short_of_space = true;
                    return Err(AppendError::NoSpace(e));
                }
                Err(e) => return Err(AppendError::Io(e)),
            }
        }
        let mut need = 0u64;
        for r in records {
            let size = RECORD_OVERHEAD + r.len() as u64;
            if r.len() > MAX_RECORD || size > self.limits.max_bytes {
                return Err(AppendError::TooLarge(r.len()));
            }
            need += size;
        }
        let full = AppendError::Full {
            messages: self.len(),
            bytes: self.bytes,
        };
        if self.len().saturating_add(records.len() as u64) > self.limits.max_messages {
            return Err(full);
        }
        let drained = self.acked + 1 == self.next_seq;
        let mut fresh_segment = false;
        if self.bytes.saturating_add(need) > self.limits.max_bytes {
            // Everything on disk is acknowledged: moving to a new segment frees all of it.
            if !drained || need > self.limits.max_bytes {
                return Err(full);
            }
            fresh_segment = true;
        }

        if self.short_of_space || self.disk.is_full() {
            // Whatever acknowledged records hold, and a position a full disk held back.
            self.reclaim_quietly();
        }
        let mut retried = false;
        loop {
            let before = Rollback {
                segments: self.segments.len(),
                active_size: self.active_segment().size,
                next_seq: self.next_seq,
                bytes: self.bytes,
            };
            match self.write_batch(records, fresh_segment, durable) {
                Ok(created) => {
                    if created && self.segments.len() > 1 {
                        // The segment(s) left behind may be fully acknowledged already.
                        self.reclaim_quietly();
                    }
                    if self.buf.capacity() > KEEP_BUFFER {
                        self.buf = Vec::new();
                    }
                    self.short_of_space = false;
                    self.disk.wrote(&self.dir);
                    return Ok(first);
                }
                Err(e) => {
                    self.rollback(before);
                    if !self.disk.failed(&self.dir, &e) {
                        return Err(AppendError::Io(e));
                    }
                    self.short_of_space = true;
                    // Space acknowledged records hold may make room for the batch: once.
                    let bytes = self.bytes;
                    self.reclaim_quietly();
                    if retried || self.broken || self.bytes == bytes {
                        return Err(AppendError::NoSpace(e));
                    }
                    retried = true;
                }
            }
        }
    }

    /// Writes the batch, rotating segments as needed; returns whether a segment was created.
    fn write_batch(
        &mut self,
        records: &[&[u8]],
        fresh_segment: bool,
        durable: bool,
    ) -> io::Result<bool> {
        let mut created = false;
        let mut seq = self.next_seq;
        self.buf.clear();
        if fresh_segment && self.active_segment().size > 0 {
            self.rotate(seq)?;
            created = true;
        }
        for r in records {
            let size = RECORD_OVERHEAD + r.len() as u64;
            let in_segment = self.active_segment().size + self.buf.len() as u64;
            if in_segment > 0 && in_segment + size > self.segment_max {
                self.flush_buf()?;
                self.rotate(seq)?;
                created = true;
            }
            segment::encode(&mut self.buf, seq, r);
            seq += 1;
        }
        self.flush_buf()?;
        self.next_seq = seq;
        match self.fsync {
            // The active segment's next sync (or its close on rotation) covers an unsynced
            // batch; only a new directory entry is synced at once, since a later durable
            // append into that segment would not sync it.
            Fsync::Always if !durable && !created => {}
            Fsync::Always => {
                if let Some(f) = &self.active {
                    super::sync_data(f)?;
                }
                if created {
                    File::open(&self.dir)?.sync_all()?;
                }
            }
            Fsync::Periodic | Fsync::Never => {
                self.dirty.active = true;
                self.dirty.dir |= created;
            }
        }
        Ok(created)
    }

    /// Writes the buffered records at the end of the active segment.
    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let at = self.active_segment().size;
        if self.active.is_none() {
            self.active = Some(open_for_append(&self.dir, self.active_segment().first)?);
        }
        let active = self.active.as_ref().expect("opened above");
        active.write_all_at(&self.buf, at)?;
        let n = self.buf.len() as u64;
        self.segments.back_mut().expect("never empty").size += n;
        self.bytes += n;
        self.buf.clear();
        Ok(())
    }

    /// Closes the active segment (synced unless [`Fsync::Never`]) and starts segment `first`.
    fn rotate(&mut self, first: u64) -> io::Result<()> {
        if self.fsync != Fsync::Never {
            if let Some(f) = &self.active {
                super::sync_data(f)?;
            }
        }
        create_segment(&self.dir, first)?;
        self.segments.push_back(Segment { first, size: 0 });
        self.active = Some(open_for_append(&self.dir, first)?);
        Ok(())
    }

    /// Undoes a failed append; if that fails too, the log refuses further appends.
    fn rollback(&mut self, to: Rollback) {
        let mut result = Ok(());
        while self.segments.len() > to.segments {
            let s = self.segments.pop_back().expect("longer than before");
            if let Err(e) = remove(&self.dir, s.first) {
                result = Err(e);
            }
        }
        let last = *self.active_segment();
        let undo = open_for_append(&self.dir, last.first).and_then(|f| {
            f.set_len(to.active_size)?;
            Ok(f)
        });
        match undo {
            Ok(f) => self.active = Some(f),
            Err(e) => result = Err(e),
        }
        self.segments.back_mut().expect("never empty").size = to.active_size;
        self.next_seq = to.next_seq;
        self.bytes = to.bytes;
        self.buf.clear();
        if let Err(e) = result {
            ::log::error!("{}: undoing a failed append: {e}", self.dir.display());
            self.broken = true;
        }
    }

    /// `fdatasync` of what was written and not yet synced (the active segment, new directory
    /// entries, the acked file). For [`Fsync::Periodic`] callers, e.g. every second.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty.active {
            if let Some(f) = &self.active {
                super::sync_data(f)?;
            }
            self.dirty.active = false;
        }
        if self.dirty.dir {
            File::open(&self.dir)?.sync_all()?;
            self.dirty.dir = false;
        }
        if self.acked_unsaved {
            self.write_acked()?;
        }
        if self.dirty.acked {
            self.acked_file.sync()?;
            self.dirty.acked = false;
        }
        Ok(())
    }

    /// Acknowledges every record with sequence number <= `upto`: writes that to the `acked` file
    /// (not synced, see "Durability" above) and reclaims the space of acknowledged records (see
    /// "A full disk" above). `upto` beyond `next_seq - 1` is clamped; going backwards is ignored.
    ///
    /// The acknowledgement takes effect even when the `acked` file cannot be written: the file
    /// keeps its previous value and is written again later. A full disk is not an error (it is
    /// logged once for the hub); any other failure to write the file or delete a segment is
    /// returned, after everything else was done.
    pub fn ack(&mut self, upto: u64) -> io::Result<()> {
        let upto = upto.min(self.next_seq - 1);
        if upto <= self.acked {
            return if self.acked_unsaved {
                self.write_acked()
            } else {
                Ok(())
            };
        }
        self.acked = upto;
        let written = self.write_acked();
        // Deleting needs no space; what it frees lets a held-back position be written.
        let reclaimed = self.reclaim();
        written.and(reclaimed)
    }

    /// Writes `acked` to its file; a full disk leaves it for later (`acked_unsaved`) and is not
    /// an error.
    fn write_acked(&mut self) -> io::Result<()> {
        let result = self.acked_file.write(self.acked, 0);
        self.acked_file.release();
        match result {
            Ok(()) => {
                self.acked_unsaved = false;
                self.dirty.acked = true;
                self.disk.wrote(self.acked_file.path());
                Ok(())
            }
            Err(e) => {
                self.acked_unsaved = true;
                if self.disk.failed(self.acked_file.path(), &e) {
                    self.short_of_space = true;
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Moves the numbering forward so the next record gets `seq` (no effect unless `seq` is
    /// above `next_seq`); the numbers skipped hold no records and count as unacknowledged until
    /// acknowledged.
    ///
    /// For a sender whose peer reports having processed numbers this log never issued: after a
    /// power loss under [`Fsync::Periodic`] or [`Fsync::Never`] the unsynced tail is gone, and
    /// without this the records appended next would reuse those numbers and the peer would drop
    /// them as duplicates. Call `skip_to(peer + 1)` then `ack(peer)`.
    pub fn skip_to(&mut self, seq: u64) -> io::Result<()> {
        if seq <= self.next_seq {
            return Ok(());
        }
        if self.broken {
            return Err(io::Error::other(
                "an earlier write failed and could not be undone; reopen the log",
            ));
        }
        ::log::warn!(
            "{}: skipping records {}..{seq}, unknown here but seen by the peer",
            self.dir.display(),
            self.next_seq
        );
        self.rotate(seq)?;
        if self.fsync == Fsync::Always {
            File::open(&self.dir)?.sync_all()?;
        } else {
            self.dirty.dir = true;
        }
        self.next_seq = seq;
        self.reclaim()
    }

    /// Frees the space of acknowledged records: deletes the oldest segments while all their
    /// records are acknowledged, and, once every record is, replaces the active segment by an
    /// empty one when it holds an eighth of a segment (a sixty-fourth when the disk is short of
    /// space). Then
    /// writes a position a full disk held back, if space was freed.
    fn reclaim(&mut self) -> io::Result<()> {
        let before = self.bytes;
        self.delete_acknowledged()?;
        let drained = self.acked + 1 == self.next_seq;
        let active = *self.active_segment();
        let pressed = self.short_of_space || self.acked_unsaved || self.disk.is_full();
        // Short of space, a smaller drained segment is worth a new file too, but not every one:
        // a queue that keeps up would otherwise create a file and sync the folder per message.
        let worth = if pressed {
            self.segment_max / 64
        } else {
            self.segment_max / 8
        };
        if drained && active.size > 0 && active.size >= worth {
            match self.start_empty_segment() {
                Ok(()) => self.delete_acknowledged()?,
                // Tried again at the next acknowledgement or append.
                Err(e) if self.disk.failed(&self.dir, &e) => self.short_of_space = true,
                Err(e) => return Err(e),
            }
        }
        if self.acked_unsaved && self.bytes < before {
            self.write_acked()?;
        }
        Ok(())
    }

    /// [`reclaim`](Self::reclaim) where a failure only deserves a warning (an append goes on).
    fn reclaim_quietly(&mut self) {
        if let Err(e) = self.reclaim() {
            ::log::warn!(
                "{}: reclaiming acknowledged records: {e}",
                self.dir.display()
            );
        }
    }

    /// Deletes the oldest segments while all their records are acknowledged (never the active one).
    fn delete_acknowledged(&mut self) -> io::Result<()> {
        while self.segments.len() > 1 && self.segments[1].first - 1 <= self.acked {
            let s = self.segments[0];
            remove(&self.dir, s.first)?;
            self.segments.pop_front();
            self.bytes -= s.size;
        }
        Ok(())
    }

    /// Every record is acknowledged: makes an empty segment `next_seq` the active one, so the
    /// old one can be deleted (its data needs no sync). The new directory entry is synced before
    /// anything is deleted (unless [`Fsync::Never`]), so a power cut never leaves the folder
    /// without a segment to carry the numbering.
    fn start_empty_segment(&mut self) -> io::Result<()> {
        let first = self.next_seq;
        create_segment(&self.dir, first)?;
        let opened = open_for_append(&self.dir, first).and_then(|f| {
            if self.fsync != Fsync::Never {
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(f)
        });
        match opened {
            Ok(_) => {
                // Nothing is left to sync in the old one (every record is acknowledged), and
                // the new one is opened when written to: a drained queue holds no descriptor.
                self.active = None;
                self.dirty.active = false;
                self.segments.push_back(Segment { first, size: 0 });
                Ok(())
            }
            Err(e) => {
                let _ = remove(&self.dir, first);
                Err(e)
            }
        }
    }

    /// Highest acknowledged sequence number (0 = none); survives reopening.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Sequence number the next appended record gets (the first ever is 1).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Unacknowledged records: `next_seq - 1 - acked` (numbers lost in a recovery gap count).
    pub fn len(&self) -> u64 {
        self.next_seq - 1 - self.acked
    }

    /// Whether every record is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of segment files on disk (what `max_bytes` bounds).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the log's stream id is on disk, so the log reopens with the same one (false after
    /// a full disk kept [`open`](Self::open) from writing it).
    pub fn stream_saved(&self) -> bool {
        !self.stream_unsaved
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A cursor reading records in order from sequence number `from` (raised to `acked + 1`),
    /// with its own file handles; see [`Reader::read`].
    pub fn reader(&self, from: u64) -> io::Result<Reader> {
        Ok(Reader::new(self.dir.clone(), from.max(self.acked + 1)))
    }

    fn active_segment(&self) -> &Segment {
        self.segments.back().expect("never empty")
    }
}

impl Drop for Log {
    /// Syncs what is pending unless the policy is [`Fsync::Never`], so an orderly shutdown of a
    /// [`Fsync::Periodic`] log loses nothing to a later power cut.
    fn drop(&mut self) {
        if self.fsync != Fsync::Never {
            if let Err(e) = self.sync() {
                ::log::warn!("{}: final sync: {e}", self.dir.display());
            }
        }
    }
}

/// The state [`Log::rollback`] returns to.
struct Rollback {
    segments: usize,
    active_size: u64,
    next_seq: u64,
    bytes: u64,
}

/// Scans every segment in `dir`, cuts each at its first bad record, deletes segments left empty
/// (except the newest); returns each segment with its record count.
fn recover_segments(dir: &Path, fsync: Fsync) -> io::Result<VecDeque<(Segment, u64)>> {
    let firsts = segment::list(dir)?;
    let mut segments = VecDeque::with_capacity(firsts.len());
    for (i, &first) in firsts.iter().enumerate() {
        let next = firsts.get(i + 1).copied();
        let scan = segment::scan(dir, first, next.unwrap_or(u64::MAX))?;
        if scan.good_len < scan.file_len {
            let name = segment::path(dir, first);
            ::log::warn!(
                "{}: {} at byte {}; keeping {} records, dropping {} bytes",
                name.display(),
                scan.problem.unwrap_or("unexpected end"),
                scan.good_len,
                scan.records,
                scan.file_len - scan.good_len
            );
            let f = OpenOptions::new().write(true).open(&name)?;
            f.set_len(scan.good_len)?;
            if fsync != Fsync::Never {
                f.sync_all()?;
            }
        }
        if let Some(next) = next {
            if scan.records == 0 {
                remove(dir, first)?;
                continue;
            }
            let end = first + scan.records;
            if end < next {
                ::log::warn!(
                    "{}: records {end}..{next} are lost",
                    segment::path(dir, first).display()
                );
            }
        }
        segments.push_back((
            Segment {
                first,
                size: scan.good_len,
            },
            scan.records,
        ));
    }
    Ok(segments)
}

fn create_segment(dir: &Path, first: u64) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(segment::path(dir, first))
        .map(drop)
}

fn open_for_append(dir: &Path, first: u64) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment::path(dir, first))
}

fn remove(dir: &Path, first: u64) -> io::Result<()> {
    match std::fs::remove_file(segment::path(dir, first)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A random non-zero u64 from the kernel, falling back to std's randomly keyed hasher.
fn random_id() -> u64 {
    let mut bytes = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok()
        && bytes != [0; 8]
    {
        return u64::from_le_bytes(bytes);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.finish().max(1)
}

#[cfg(test)]
mod tests;
