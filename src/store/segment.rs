//! Segment files: names, record encoding, and a buffered cursor over one file's records, shared
//! by crash recovery ([`scan`]) and [`Reader`](super::Reader).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{MAX_RECORD, RECORD_OVERHEAD};

const HEADER: usize = RECORD_OVERHEAD as usize;

/// Bytes a cursor reads at a time (its buffer grows only for a larger record).
const READ_CHUNK: usize = 64 << 10;

/// The file name of the segment whose first record has sequence number `first`.
pub(crate) fn name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// The path of segment `first` in `dir`.
pub(crate) fn path(dir: &Path, first: u64) -> PathBuf {
    dir.join(name(first))
}

/// The first sequence number a segment file name stands for, or `None` for any other file.
fn parse_name(file_name: &str) -> Option<u64> {
    let digits = file_name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&first| first > 0)
}

/// The first sequence numbers of the segment files in `dir`, ascending.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// The checksum of a record: CRC-32 (IEEE) of its sequence number (u64 LE) then its payload.
fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends the encoding of record `seq` to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_RECORD);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// What [`Cursor::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A good record; its payload is `cursor.bytes(range)` until the next call.
    Record { seq: u64, payload: Range<usize> },
    /// The next record's sequence number is not below `visible`: nothing was read.
    Hidden,
    /// The file ends exactly here.
    End,
    /// The bytes here are not the expected record (torn, corrupt or out of sequence).
    Bad(&'static str),
}

/// A buffered cursor over the records of one segment file.
///
/// Records with a sequence number below the `visible` the caller passes are complete on disk (or
/// in the page cache); bytes beyond them may belong to a write still in progress. So buffered
/// bytes are trusted only for records below the `visible` in force when they were read
/// (`trusted_below`), and reread otherwise.
#[derive(Debug)]
pub(crate) struct Cursor {
    file: File,
    path: PathBuf,
    first: u64,
    /// File offset of the next record (of `buf[start]`).
    offset: u64,
    /// Sequence number the next record must carry.
    seq: u64,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    trusted_below: u64,
}

impl Cursor {
    /// A cursor at the start of segment `first` in `dir`.
    pub(crate) fn open(dir: &Path, first: u64) -> io::Result<Cursor> {
        let path = path(dir, first);
        let file = File::open(&path)?;
        Ok(Cursor {
            file,
            path,
            first,
            offset: 0,
            seq: first,
            buf: Vec::new(),
            start: 0,
            end: 0,
            trusted_below: 0,
        })
    }

    /// The segment's first sequence number.
    pub(crate) fn first(&self) -> u64 {
        self.first
    }

    /// Sequence number of the next record.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// File offset of the next record.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The segment file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Payload bytes of the record [`Cursor::next`] just returned.
    pub(crate) fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// The segment file's length now.
    pub(crate) fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Reads the next record if its sequence number is below `visible`.
    pub(crate) fn next(&mut self, visible: u64) -> io::Result<Step> {
        if self.seq >= visible {
            return Ok(Step::Hidden);
        }
        if self.seq >= self.trusted_below {
            self.start = self.end; // possibly read while still being written: read again
        }
        if self.start == self.end && self.buf.len() > 4 * READ_CHUNK {
            self.buf = Vec::new(); // give back what a large record needed
        }
        let have = self.fill(HEADER, visible)?;
        if have == 0 {
            return Ok(Step::End);
        }
        if have < HEADER {
            return Ok(Step::Bad("torn record header"));
        }
        let h = &self.buf[self.start..self.start + HEADER];
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        if len > MAX_RECORD {
            return Ok(Step::Bad("record length out of range"));
        }
        if seq != self.seq {
            return Ok(Step::Bad("record out of sequence"));
        }
        if self.fill(HEADER + len, visible)? < HEADER + len {
            return Ok(Step::Bad("torn record"));
        }
        let payload = self.start + HEADER..self.start + HEADER + len;
        if checksum(seq, &self.buf[payload.clone()]) != crc {
            return Ok(Step::Bad("record checksum mismatch"));
        }
        self.start = payload.end;
        self.offset += (HEADER + len) as u64;
        self.seq += 1;
        Ok(Step::Record { seq, payload })
    }

    /// Makes at least `need` bytes from the next record on available in the buffer, unless the
    /// file ends first; returns how many are.
    fn fill(&mut self, need: usize, visible: u64) -> io::Result<usize> {
        if self.end - self.start >= need {
            return Ok(self.end - self.start);
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.trusted_below = visible;
        }
        if self.buf.len() - self.start < need {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < need {
                self.buf.resize(need.max(READ_CHUNK), 0);
            }
        }
        while self.end - self.start < need {
            let at = self.offset + (self.end - self.start) as u64;
            match self.file.read_at(&mut self.buf[self.end..], at) {
                Ok(0) => break,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.end - self.start)
    }
}

/// What [`scan`] found in one segment file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Good records from the start of the file.
    pub(crate) records: u64,
    /// Bytes those records take: where the file should end.
    pub(crate) good_len: u64,
    /// The file's length.
    pub(crate) file_len: u64,
    /// Why the good records stop before the file ends.
    pub(crate) problem: Option<&'static str>,
}

/// Checks every record of segment `first` in `dir`, stopping at the first one that is torn,
/// corrupt, out of sequence, or numbered `limit` or above (the next segment's first).
pub(crate) fn scan(dir: &Path, first: u64, limit: u64) -> io::Result<Scan> {
    let mut cursor = Cursor::open(dir, first)?;
    let problem = loop {
        let before = cursor.offset();
        match cursor.next(u64::MAX)? {
            Step::Record { seq, .. } if seq >= limit => {
                cursor.offset = before;
                cursor.seq = seq;
                break Some("records overlap the next segment");
            }
            Step::Record { .. } => {}
            Step::End | Step::Hidden => break None,
            Step::Bad(why) => break Some(why),
        }
    };
    Ok(Scan {
        records: cursor.seq() - first,
        good_len: cursor.offset(),
        file_len: cursor.file_len()?,
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_sequence_and_ignore_other_files() {
        assert_eq!(name(42), "00000000000000000042.seg");
        assert_eq!(parse_name(&name(u64::MAX)), Some(u64::MAX));
        for other in [
            "acked",
            "stream",
            "42.seg",
            "00000000000000000000.seg",
            "0000000000000000004x.seg",
            "00000000000000000042.seg.tmp",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
        let dir = tempfile::tempdir().unwrap();
        for first in [100u64, 9, 1_000_000] {
            std::fs::write(path(dir.path(), first), b"").unwrap();
        }
        std::fs::write(dir.path().join("acked"), b"").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![9, 100, 1_000_000]);
    }

    #[test]
    fn cursor_rereads_bytes_that_were_not_yet_visible() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        encode(&mut data, 5, b"one");
        let first_len = data.len();
        encode(&mut data, 6, b"two");
        // When the cursor first reads, record 6's place holds other bytes (a write that was
        // rolled back, say).
        let mut early = data.clone();
        early[first_len..].fill(0xee);
        std::fs::write(path(dir.path(), 5), &early).unwrap();
        let mut c = Cursor::open(dir.path(), 5).unwrap();
        match c.next(6).unwrap() {
            Step::Record { seq: 5, payload } => assert_eq!(c.bytes(payload), b"one"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.next(6).unwrap(), Step::Hidden);
        std::fs::write(path(dir.path(), 5), &data).unwrap();
        match c.next(7).unwrap() {
            Step::Record { seq: 6, payload } => assert_eq!(c.bytes(payload), b"two"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.next(8).unwrap(), Step::End);
    }
}
