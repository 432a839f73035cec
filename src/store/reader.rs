//! [`Reader`]: an in-order cursor over a [`Log`](super::Log)'s records.

use std::io;
use std::path::PathBuf;

use super::segment::{self, Cursor, Step};
use crate::proto::frame::MESSAGE_HEADER;

/// A cursor reading a log's records in order, with its own file handles (see [`Reader::read`]).
///
/// It holds one open segment file and a read buffer (64 KiB, more only while a larger record
/// passes). A segment the log deletes while the reader is in it stays readable through the open
/// handle (its disk space is freed when the reader moves on); acknowledged records whose segment
/// is already gone are skipped. `Send`: it may live on another thread than the log.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    position: u64,
    cursor: Option<Cursor>,
}

impl Reader {
    pub(crate) fn new(dir: PathBuf, from: u64) -> Reader {
        Reader {
            dir,
            position: from.max(1),
            cursor: None,
        }
    }

    /// Appends to `out` up to `max` records `(seq, payload)` with `seq < visible`, crossing
    /// segment files as needed; returns how many. Never waits for data.
    ///
    /// `visible` must be a `next_seq` the log reported after an append that returned: records
    /// below it are complete on disk, those above may be half written. A record that is damaged
    /// (its CRC or sequence number is wrong) is an [`io::ErrorKind::InvalidData`] error, returned
    /// once the records before it were handed out; reopening the log cuts it off.
    pub fn read(
        &mut self,
        visible: u64,
        max: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> io::Result<usize> {
        self.read_limited(visible, max, usize::MAX, out)
    }

    /// [`read`](Self::read), stopping also once the payloads handed out reach `max_bytes` (the
    /// record that reaches it is included, so at least one record comes when any is visible).
    pub fn read_limited(
        &mut self,
        visible: u64,
        max: usize,
        max_bytes: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> io::Result<usize> {
        let mut n = 0;
        let mut bytes = 0;
        while n < max && bytes < max_bytes && self.position < visible {
            if self.cursor.is_none() && !self.locate(visible, None)? {
                break;
            }
            let cursor = self.cursor.as_mut().expect("located");
            let offset = cursor.offset();
            match cursor.next(visible)? {
                Step::Record { seq, payload } => {
                    // With room for a link frame's header: the frame is made in place.
                    let record = cursor.bytes(payload);
                    let mut payload = Vec::with_capacity(record.len() + MESSAGE_HEADER);
                    payload.extend_from_slice(record);
                    bytes += payload.len();
                    out.push((seq, payload));
                    self.position = seq + 1;
                    n += 1;
                }
                Step::Hidden => break,
                Step::End => {
                    let done = cursor.first();
                    self.cursor = None;
                    if !self.locate(visible, Some(done))? {
                        break;
                    }
                }
                Step::Bad(why) => {
                    if n > 0 {
                        break;
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: {why} at byte {offset} (record {})",
                            cursor.path().display(),
                            self.position
                        ),
                    ));
                }
            }
        }
        Ok(n)
    }

    /// The sequence number of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Opens the segment holding `position` (only among segments after `after`), positioned at
    /// that record; moves `position` forward over numbers no segment holds (acknowledged and
    /// deleted, or lost in a recovery gap). Returns false when no segment has it yet.
    fn locate(&mut self, visible: u64, mut after: Option<u64>) -> io::Result<bool> {
        'segments: loop {
            let firsts = segment::list(&self.dir)?;
            let candidates: Vec<u64> = firsts
                .into_iter()
                .filter(|&f| after.is_none_or(|a| f > a))
                .collect();
            let first = match candidates.iter().rev().find(|&&f| f <= self.position) {
                Some(&f) => f,
                None => match candidates.first() {
                    Some(&f) => f,
                    None => return Ok(false),
                },
            };
            let mut cursor = match Cursor::open(&self.dir, first) {
                Ok(c) => c,
                // Deleted since the listing (acknowledged): look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            self.position = self.position.max(first);
            while cursor.seq() < self.position {
                let offset = cursor.offset();
                match cursor.next(visible)? {
                    Step::Record { .. } => {}
                    Step::Hidden => break,
                    Step::End => {
                        after = Some(first);
                        continue 'segments;
                    }
                    Step::Bad(why) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: {why} at byte {offset}", cursor.path().display()),
                        ));
                    }
                }
            }
            self.cursor = Some(cursor);
            return Ok(true);
        }
    }
}
