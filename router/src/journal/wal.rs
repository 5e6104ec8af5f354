//! The journal's log: each commit appended to one file and synced, then
//! applied to the redb file in bulk now and then (a **checkpoint**).
//!
//! A redb commit costs about the same CPU whatever it holds (the B-tree
//! pages it rewrites, the allocator state, the sync), about 230 µs here,
//! which at a few messages per commit was most of the server's cost per
//! message. Appending the same changes to a log and syncing it costs about
//! a fifth of that; redb then takes a whole checkpoint's changes (a tenth
//! of a second's) in one transaction.
//!
//! **File.** A header (`PARLEY-JOURNAL-LOG\0`, format, a token also
//! stored in the redb file, so a log is never replayed onto a journal it
//! does not belong to, such as a restored backup, and the generation),
//! then one frame per commit: length (u32), CRC-32 (u32) of what follows,
//! the generation (u64) and the payload (the ops, each a tag and its
//! fields; integers little-endian). Frames are written at the end of what
//! is synced, so a crash can only leave a torn last frame, which was never
//! acknowledged: replay stops at the first frame that is short, fails its
//! CRC or belongs to another generation. A failed write is retried at the
//! same offset.
//!
//! **Space.** The file is filled with zeros ahead of the frames, a MiB at
//! a time ([`GROW`]), and kept at its size: a frame then overwrites blocks
//! the file already has, so its sync writes the data alone, not the
//! file's size and block map as well (a quarter of a sync's cost here).
//! Emptying the log after a checkpoint bumps the generation in the header
//! (one small synced write): the old frames stay on disk, from another
//! generation, and are never read again. So the file stays at the most one
//! checkpoint's interval wrote, cut back past [`MAX_KEPT`].
//!
//! **Replay.** At open the log's ops are applied to the redb file in one
//! transaction and the log is emptied. Every op is idempotent over a state
//! that already holds some of the log's leading ops (puts overwrite,
//! releases of a device already released and deletes of a missing key do
//! nothing), so a crash between a checkpoint's redb commit and the log's
//! truncation replays a prefix twice and reaches the same state.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::{Op, QueuedRecord, Reader, SENT_LEN, SentRecord, put_bytes, put_device};

const MAGIC: &[u8; 19] = b"PARLEY-JOURNAL-LOG\0";
const LOG_FORMAT: u8 = 1;
/// Where the generation is in the header.
const GENERATION_AT: u64 = MAGIC.len() as u64 + 1 + 8;
/// Magic, format, token, generation.
pub(super) const HEADER_LEN: u64 = GENERATION_AT + 8;
/// Length, CRC, generation.
const FRAME_HEADER: usize = 16;
/// Zeros written ahead of the frames at a time (and when created).
const GROW: u64 = 1024 * 1024;
/// A log file larger than this when emptied is cut back to [`GROW`].
const MAX_KEPT: u64 = 64 * 1024 * 1024;

const TAG_QUEUE: u8 = 1;
const TAG_CHANGE: u8 = 2;
const TAG_RETARGET: u8 = 3;
const TAG_FORGET: u8 = 4;

/// The log file next to the journal at `journal`: `<journal>.log`.
pub fn path_of(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// The open log, written by the committer only.
#[derive(Debug)]
pub(super) struct Wal {
    file: File,
    /// Bytes written and synced: where the next frame goes.
    len: u64,
    /// Frames of this generation are the log's; it grows at each reset.
    generation: u64,
    /// The file's length: frames below it overwrite zeros or old frames.
    size: u64,
    frame: Vec<u8>,
}

impl Wal {
    /// Creates (or empties) the log at `path` for the journal holding
    /// `token`, synced, with its directory entry.
    pub(super) fn create(path: &Path, token: u64) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let generation: u64 = 1;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.push(LOG_FORMAT);
        header.extend_from_slice(&token.to_le_bytes());
        header.extend_from_slice(&generation.to_le_bytes());
        file.write_all_at(&header, 0)?;
        let mut wal = Self {
            file,
            len: HEADER_LEN,
            generation,
            size: HEADER_LEN,
            frame: Vec::new(),
        };
        wal.grow(GROW)?;
        wal.file.sync_all()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(wal)
    }

    /// Writes `bytes` of zeros past the end of the file (unsynced: the
    /// next frame's sync covers them). A frame header of zeros is of
    /// generation 0, never a log's.
    fn grow(&mut self, bytes: u64) -> io::Result<()> {
        let zeros = vec![0u8; usize::try_from(bytes).unwrap_or(usize::MAX)];
        self.file.write_all_at(&zeros, self.size)?;
        self.size += bytes;
        Ok(())
    }

    /// Appends one frame holding `ops` (those the log keeps: barriers and
    /// backups are not changes) and syncs it. On an error nothing counts
    /// as written: the retry writes at the same offset.
    pub(super) fn append(&mut self, ops: &[Op], scratch: &mut Vec<u8>) -> io::Result<()> {
        self.frame.clear();
        self.frame.extend_from_slice(&[0; 8]);
        self.frame.extend_from_slice(&self.generation.to_le_bytes());
        for op in ops {
            encode(op, &mut self.frame, scratch);
        }
        if self.frame.len() == FRAME_HEADER {
            return Ok(());
        }
        let payload_len = u32::try_from(self.frame.len() - FRAME_HEADER)
            .map_err(|_| io::Error::other("one commit over 4 GiB"))?;
        let crc = crc32fast::hash(&self.frame[8..]);
        self.frame[..4].copy_from_slice(&payload_len.to_le_bytes());
        self.frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let end = self.len + self.frame.len() as u64;
        if end > self.size {
            self.grow((end - self.size).max(GROW))?;
        }
        self.file.write_all_at(&self.frame, self.len)?;
        self.file.sync_data()?;
        self.len += self.frame.len() as u64;
        Ok(())
    }

    /// Empties the log (after a checkpoint made its ops durable in redb):
    /// the next generation starts, synced before any frame of it is
    /// written. A log that grew past its preallocation is cut back to it.
    pub(super) fn reset(&mut self) -> io::Result<()> {
        let next = self.generation + 1;
        self.file.write_all_at(&next.to_le_bytes(), GENERATION_AT)?;
        if self.size > HEADER_LEN + MAX_KEPT {
            self.file.set_len(HEADER_LEN + GROW)?;
            self.size = HEADER_LEN + GROW;
        }
        self.file.sync_data()?;
        self.generation = next;
        self.len = HEADER_LEN;
        Ok(())
    }

    /// Bytes of frames in the log.
    pub(super) fn pending_bytes(&self) -> u64 {
        self.len - HEADER_LEN
    }
}

/// What a log held at open.
#[derive(Debug, Default)]
pub(super) struct Read {
    pub(super) token: u64,
    pub(super) ops: Vec<Op>,
    /// Bytes after the last whole frame (a torn write), ignored.
    pub(super) torn_bytes: u64,
}

/// Why a log cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a Parley journal log (bad header)")]
    Header,
    #[error("log format {0} is not one this release reads")]
    Format(u8),
    #[error("frame at byte {offset} passed its checksum but does not decode ({why})")]
    Frame { offset: u64, why: &'static str },
}

/// Reads the log at `path`; `None` if there is none.
pub(super) fn read(path: &Path) -> Result<Option<Read>, LogError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if bytes.len() < HEADER_LEN as usize || &bytes[..MAGIC.len()] != MAGIC {
        return Err(LogError::Header);
    }
    let format = bytes[MAGIC.len()];
    if format != LOG_FORMAT {
        return Err(LogError::Format(format));
    }
    let u64_at = |at: usize| {
        let mut le = [0; 8];
        le.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(le)
    };
    let generation = u64_at(GENERATION_AT as usize);
    let mut read = Read {
        token: u64_at(MAGIC.len() + 1),
        ..Read::default()
    };
    let mut at = HEADER_LEN as usize;
    loop {
        let rest = &bytes[at..];
        // A frame of another generation (zeros, or an older log's) ends
        // the log; one of this generation that is short or fails its CRC
        // is a torn write.
        if rest.len() < FRAME_HEADER {
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if u64_at(at + 8) != generation {
            break;
        }
        let whole = rest
            .get(8..FRAME_HEADER + len)
            .filter(|framed| crc32fast::hash(framed) == crc);
        let Some(framed) = whole else {
            read.torn_bytes = rest.len().min(FRAME_HEADER + len) as u64;
            break;
        };
        let payload = &framed[8..];
        let mut r = Reader(payload);
        while !r.0.is_empty() {
            let op = decode(&mut r).map_err(|why| LogError::Frame {
                offset: at as u64,
                why,
            })?;
            read.ops.push(op);
        }
        at += FRAME_HEADER + len;
    }
    Ok(Some(read))
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_ids(out: &mut Vec<u8>, ids: &[u64]) {
    put_u32(out, ids.len());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

fn put_record(out: &mut Vec<u8>, record: &QueuedRecord, scratch: &mut Vec<u8>) {
    out.extend_from_slice(&record.id.to_le_bytes());
    record.encode(scratch);
    put_bytes(out, scratch);
}

fn encode(op: &Op, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    match op {
        Op::Queue {
            record,
            sent,
            forgotten,
            ..
        } => {
            out.push(TAG_QUEUE);
            put_record(out, record, scratch);
            match sent {
                Some(sent) => {
                    out.push(1);
                    out.extend_from_slice(&sent.message_id.to_le_bytes());
                    out.extend_from_slice(&sent.encode());
                }
                None => out.push(0),
            }
            put_ids(out, forgotten);
        }
        Op::Change { released, queued } => {
            out.push(TAG_CHANGE);
            put_u32(out, released.len());
            for (id, device) in released {
                out.extend_from_slice(&id.to_le_bytes());
                put_device(out, *device);
            }
            put_u32(out, queued.len());
            for record in queued {
                put_record(out, record, scratch);
            }
        }
        Op::Retarget { from, to, ids } => {
            out.push(TAG_RETARGET);
            put_device(out, *from);
            put_device(out, *to);
            put_ids(out, ids);
        }
        Op::Forget(ids) => {
            out.push(TAG_FORGET);
            put_ids(out, ids);
        }
        Op::Barrier(_) | Op::Backup(_) => {}
    }
}

fn get_ids(r: &mut Reader<'_>) -> Result<Vec<u64>, &'static str> {
    let n = r.u32()? as usize;
    if n > r.0.len() / 8 {
        return Err("count past the end");
    }
    (0..n).map(|_| r.u64()).collect()
}

fn get_record(r: &mut Reader<'_>) -> Result<QueuedRecord, &'static str> {
    let id = r.u64()?;
    let len = r.u32()? as usize;
    QueuedRecord::decode(id, r.take(len)?)
}

fn decode(r: &mut Reader<'_>) -> Result<Op, &'static str> {
    Ok(match r.u8()? {
        TAG_QUEUE => {
            let record = get_record(r)?;
            let sent = match r.u8()? {
                0 => None,
                1 => {
                    let message_id = r.u64()?;
                    Some(SentRecord::decode(message_id, r.take(SENT_LEN)?)?)
                }
                _ => return Err("bad send flag"),
            };
            Op::Queue {
                record,
                sent,
                forgotten: get_ids(r)?,
                done: None,
            }
        }
        TAG_CHANGE => {
            let n = r.u32()? as usize;
            if n > r.0.len() / 24 {
                return Err("count past the end");
            }
            let released = (0..n)
                .map(|_| Ok((r.u64()?, r.device()?)))
                .collect::<Result<_, &'static str>>()?;
            let n = r.u32()? as usize;
            let queued = (0..n)
                .map(|_| get_record(r))
                .collect::<Result<_, &'static str>>()?;
            Op::Change { released, queued }
        }
        TAG_RETARGET => Op::Retarget {
            from: r.device()?,
            to: r.device()?,
            ids: get_ids(r)?,
        },
        TAG_FORGET => Op::Forget(get_ids(r)?),
        _ => return Err("unknown op"),
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::Device;
    use crate::journal::{Frames, RecordKind};

    fn record(id: u64) -> QueuedRecord {
        QueuedRecord {
            id,
            kind: RecordKind::Message {
                sender: Device::new(1, 1),
                notify: None,
            },
            targets: vec![Device::new(2, 1), Device::new(2, 2)],
            frames: Frames::Shared(Bytes::from_static(b"frame")),
        }
    }

    fn ops() -> Vec<Op> {
        vec![
            Op::Queue {
                record: record(10),
                sent: Some(SentRecord {
                    message_id: 10,
                    device: Device::new(1, 1),
                    client_msg_id: 7,
                    timestamp_ms: 1234,
                    digest: 99,
                }),
                forgotten: vec![3, 4],
                done: None,
            },
            Op::Change {
                released: vec![(10, Device::new(2, 1))],
                queued: vec![record(11)],
            },
            Op::Retarget {
                from: Device::new(2, 2),
                to: Device::new(2, 3),
                ids: vec![10, 11],
            },
            Op::Forget(vec![10]),
        ]
    }

    /// The ops as text, to compare (Op holds senders and is not `Eq`).
    fn shown(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                Op::Queue {
                    record,
                    sent,
                    forgotten,
                    ..
                } => format!("queue {record:?} {sent:?} {forgotten:?}"),
                Op::Change { released, queued } => format!("change {released:?} {queued:?}"),
                Op::Retarget { from, to, ids } => format!("retarget {from:?} {to:?} {ids:?}"),
                Op::Forget(ids) => format!("forget {ids:?}"),
                Op::Barrier(_) | Op::Backup(_) => "other".into(),
            })
            .collect()
    }

    #[test]
    fn ops_round_trip_through_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j.log");
        let mut wal = Wal::create(&path, 42).expect("create");
        let mut scratch = Vec::new();
        wal.append(&ops()[..2], &mut scratch).expect("append");
        wal.append(&ops()[2..], &mut scratch).expect("append");
        let read = read(&path).expect("read").expect("a log");
        assert_eq!(read.token, 42);
        assert_eq!(read.torn_bytes, 0);
        assert_eq!(shown(&read.ops), shown(&ops()));
    }

    #[test]
    fn a_torn_last_frame_is_ignored_and_the_frames_before_it_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j.log");
        let mut wal = Wal::create(&path, 1).expect("create");
        let mut scratch = Vec::new();
        wal.append(&ops()[..1], &mut scratch).expect("append");
        let whole = wal.len;
        wal.append(&ops()[1..], &mut scratch).expect("append");
        let full = wal.len;
        let bytes = std::fs::read(&path).expect("read the file");
        // A write that stopped at every byte of the second frame (the rest
        // still the preallocated zeros): the first frame is read.
        let torn = dir.path().join("torn.log");
        for cut in whole..full {
            if bytes[cut as usize..full as usize].iter().all(|b| *b == 0) {
                continue; // nothing the write had not written yet
            }
            let mut cut_bytes = bytes.clone();
            cut_bytes[cut as usize..full as usize].fill(0);
            cut_bytes.truncate(full as usize + 64);
            std::fs::write(&torn, &cut_bytes).expect("write");
            let got = super::read(&torn).expect("read").expect("a log");
            assert_eq!(shown(&got.ops), shown(&ops()[..1]), "cut at {cut}");
            if cut >= whole + FRAME_HEADER as u64 {
                assert!(got.torn_bytes > 0, "cut at {cut}: reported as torn");
            }
        }
        // A file that ends inside the frame.
        std::fs::write(&torn, &bytes[..(full - 3) as usize]).expect("write");
        let got = super::read(&torn).expect("read").expect("a log");
        assert_eq!(shown(&got.ops), shown(&ops()[..1]));
        // A flipped byte in the second frame's payload: its CRC fails.
        let mut flipped = bytes.clone();
        flipped[(full - 1) as usize] ^= 0xff;
        std::fs::write(&torn, &flipped).expect("write");
        let got = super::read(&torn).expect("read").expect("a log");
        assert_eq!(shown(&got.ops), shown(&ops()[..1]));
    }

    #[test]
    fn a_log_past_its_zeros_grows_and_is_read_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j.log");
        let mut wal = Wal::create(&path, 3).expect("create");
        let mut scratch = Vec::new();
        let mut frames = 0;
        while wal.len < HEADER_LEN + 2 * GROW + 1000 {
            wal.append(&ops(), &mut scratch).expect("append");
            frames += 1;
        }
        let got = super::read(&path).expect("read").expect("a log");
        assert_eq!(got.ops.len(), frames * ops().len());
        assert_eq!(got.torn_bytes, 0);
        assert!(std::fs::metadata(&path).expect("metadata").len() >= wal.len);
    }

    #[test]
    fn after_a_reset_only_the_new_generation_is_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j.log");
        let mut wal = Wal::create(&path, 9).expect("create");
        let mut scratch = Vec::new();
        wal.append(&ops()[..2], &mut scratch).expect("append");
        wal.append(&ops()[2..], &mut scratch).expect("append");
        let size = std::fs::metadata(&path).expect("metadata").len();
        wal.reset().expect("reset");
        // Shorter than what it overwrites: the old frames after it stay
        // on disk, of the old generation.
        wal.append(&ops()[3..], &mut scratch).expect("append");
        let read = read(&path).expect("read").expect("a log");
        assert_eq!(shown(&read.ops), shown(&ops()[3..]));
        assert_eq!(read.torn_bytes, 0);
        assert_eq!(
            std::fs::metadata(&path).expect("metadata").len(),
            size,
            "frames overwrite preallocated space: the file does not grow"
        );
    }

    #[test]
    fn a_reset_log_is_empty_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("j.log");
        assert!(read(&path).expect("read").is_none());
        let mut wal = Wal::create(&path, 5).expect("create");
        wal.append(&ops(), &mut Vec::new()).expect("append");
        assert!(wal.pending_bytes() > 0);
        wal.reset().expect("reset");
        assert_eq!(wal.pending_bytes(), 0);
        let read = read(&path).expect("read").expect("a log");
        assert!(read.ops.is_empty());
        assert_eq!(read.token, 5);
        std::fs::write(&path, b"something else entirely, long enough").expect("write");
        assert!(matches!(super::read(&path), Err(LogError::Header)));
    }
}
