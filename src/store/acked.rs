//! The acknowledged mark beside the SQLite log (`<log>.acked`): the position and hash of an
//! event an fsync of the log made durable, rewritten by the WAL syncer at most once a second
//! and at a clean stop.
//!
//! Why: an acknowledged event lives in the `-wal` file until a checkpoint copies it into the
//! log. If that file is removed or damaged after a crash (an operator "cleaning up", a disk
//! error), SQLite opens the log without the tail and nothing inside the log can tell: the chain
//! is intact up to its new end, and the saved head (`store_heads`) is in the lost pages too.
//! This file is outside the WAL, so a start on such a log is refused (naming the lost range)
//! and `palmgate audit verify` reports it, instead of the tail vanishing silently (review,
//! session 24: 2 065 of 14 085 acknowledged sessions gone after `rm events.db-wal`, no word).
//!
//! The mark is written only after the fsync that made its event durable, so it never claims
//! more than the log holds; the last second's acknowledgements are not covered. It is one
//! fixed-size record written in place at offset 0 (one sector: a write of it is whole or not
//! at all), then fsync'd. A restored backup is older than its mark: the start says to move the
//! mark aside, which is the operator acknowledging what the backup lacks.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often at most the mark is rewritten while appends go on.
pub const EVERY: Duration = Duration::from_secs(1);

/// `palmgate-acked 1 <position, 20 digits> <hash, 64 hex>\n`: 103 bytes.
const PREFIX: &str = "palmgate-acked 1 ";
const LEN: usize = PREFIX.len() + 20 + 1 + 64 + 1;

/// `<log>.acked`.
pub fn path_beside(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".acked");
    PathBuf::from(p)
}

/// An event the log acknowledged: its position and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub position: u64,
    pub hash: [u8; 32],
}

fn encode(m: &Mark) -> Vec<u8> {
    let text = format!("{PREFIX}{:020} {}\n", m.position, hex::encode(m.hash));
    debug_assert_eq!(text.len(), LEN);
    text.into_bytes()
}

/// The mark at `path`: `None` when there is none; an error naming the file when it holds
/// something else.
pub fn read(path: &Path) -> Result<Option<Mark>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bad = || format!("{}: not a palmgate acknowledged mark", path.display());
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    let rest = text.strip_prefix(PREFIX).ok_or_else(bad)?;
    let (position, hash) = rest.trim_end().split_once(' ').ok_or_else(bad)?;
    let position: u64 = position.parse().map_err(|_| bad())?;
    let mut h = [0u8; 32];
    hex::decode_to_slice(hash, &mut h).map_err(|_| bad())?;
    Ok(Some(Mark { position, hash: h }))
}

/// Rewrites the mark as the syncer makes events durable.
pub struct Writer {
    path: PathBuf,
    file: Option<std::fs::File>,
    written: Option<Mark>,
    pending: Option<Mark>,
    /// When the mark was last written (`None`: not yet, so the first durable event is written
    /// at once).
    at: Option<Instant>,
    warned: bool,
}

impl Writer {
    pub fn new(path: PathBuf) -> Writer {
        Writer {
            path,
            file: None,
            written: None,
            pending: None,
            at: None,
            warned: false,
        }
    }

    /// `mark` is durable: written now if [`EVERY`] has passed since the last write, else kept
    /// for a later call or [`Writer::flush`].
    pub fn durable(&mut self, mark: Mark) {
        if self.pending.is_none_or(|p| mark.position > p.position) {
            self.pending = Some(mark);
        }
        if self.at.is_none_or(|t| t.elapsed() >= EVERY) {
            self.flush();
        }
    }

    /// Writes the newest durable mark if it is not written yet (also at a clean stop).
    pub fn flush(&mut self) {
        let Some(mark) = self.pending else {
            return;
        };
        if self.written == Some(mark) {
            return;
        }
        match self.write(&mark) {
            Ok(()) => {
                self.written = Some(mark);
                self.at = Some(Instant::now());
            }
            Err(e) => {
                // Tried again a second later, not at every fsync.
                self.at = Some(Instant::now());
                // The mark only helps find a lost tail: the log goes on without it.
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(path = %self.path.display(), error = %e,
                        "cannot write the acknowledged mark beside the event log");
                }
                self.file = None;
            }
        }
    }

    fn write(&mut self, mark: &Mark) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&self.path)?;
                self.file.insert(f)
            }
        };
        file.write_all_at(&encode(mark), 0)?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_read_back_as_written_and_garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("events.db"));
        assert!(path.ends_with("events.db.acked"));
        assert_eq!(read(&path).unwrap(), None);
        let mut w = Writer::new(path.clone());
        let m1 = Mark {
            position: 7,
            hash: [0xab; 32],
        };
        // The first durable event is written at once.
        w.durable(m1);
        assert_eq!(read(&path).unwrap(), Some(m1));
        let m2 = Mark {
            position: 123_456_789_012,
            hash: [0x01; 32],
        };
        // Within a second of the last write: kept, written by `flush`.
        w.durable(m2);
        assert_eq!(read(&path).unwrap(), Some(m1));
        // An older mark never replaces a newer one.
        w.durable(m1);
        w.flush();
        assert_eq!(read(&path).unwrap(), Some(m2));
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, LEN);
        std::fs::write(&path, "hello").unwrap();
        let e = read(&path).unwrap_err();
        assert!(e.contains("not a palmgate acknowledged mark"), "{e}");
    }
}
