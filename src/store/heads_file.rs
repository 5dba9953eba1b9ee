//! The store writer's stream heads saved beside the log (`<log>.heads`), by a thread of their
//! own.
//!
//! Why: the heads are the writer's cache of each stream's last revision (the log has no index
//! on `(stream, revision)`, see `HeadsCheckpoint` in `sqlite.rs`); saved every
//! `CHECKPOINT_EVERY` events, opening the log folds only the events after them. They used to be
//! saved by the writer itself, as one blob in `store_heads`: at 250k streams encoding them took
//! 63 ms and the 14 MB insert 34 ms, while every append waited (a request p99 of ~100 ms in
//! the window that held it, BENCHMARKS §2, session 17), and it grows with the streams. Now the
//! writer hands a clone of its heads (shards shared until written, [`SplitMap`]) to this
//! thread and goes on; the `store_heads` row keeps only the position and hash it saved (what
//! `palmgate audit` checks the log's end against).
//!
//! The file is a cache like the blob was: one whose position is past the log's end, whose hash
//! is not the log's at its position, or that fails its digest is ignored (the heads are then
//! rebuilt from the events), and a missing one costs only a slower start.
//!
//! Layout: `PGHEADS1`, the position (`u64` LE), the event hash there (32 bytes), the stream
//! revisions ([`crate::core::split_map::revisions`]), and the SHA-256 of everything before it.
//! Written under a temporary name, fsync'd, renamed, and the directory fsync'd; mode 0600
//! (stream names hold external ids, as the log does).

use crate::core::split_map::{SplitMap, revisions};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

const MAGIC: &[u8; 8] = b"PGHEADS1";

/// `<log>.heads`.
pub(super) fn path_beside(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".heads");
    PathBuf::from(p)
}

/// Heads as of one position of the log.
#[derive(Debug)]
pub(super) struct Saved {
    pub position: u64,
    pub hash: [u8; 32],
    pub streams: SplitMap<String, u64>,
}

/// Writes `saved` to `path` atomically (module docs).
pub(super) fn write(path: &Path, saved: &Saved) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut body = Vec::with_capacity(48 + saved.streams.len() * 48 + 32);
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&saved.position.to_le_bytes());
        body.extend_from_slice(&saved.hash);
        revisions::write(
            &mut body,
            saved.streams.len(),
            saved.streams.iter().map(|(s, r)| (s.as_str(), *r)),
        )?;
        let digest = Sha256::digest(&body);
        body.extend_from_slice(&digest);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            opts.mode(0o600);
            let mut file = opts.open(&tmp)?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(&body)?;
            file.sync_all()
        }
        #[cfg(not(unix))]
        {
            let mut file = opts.open(&tmp)?;
            file.write_all(&body)?;
            file.sync_all()
        }
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The heads saved at `path`: `Ok(None)` when there is no file, `Err` saying what is wrong with
/// one that is there but not a whole heads file.
pub(super) fn read(path: &Path) -> Result<Option<Saved>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let Some((body, digest)) = bytes.split_at_checked(bytes.len().saturating_sub(32)) else {
        return Err("it is truncated".into());
    };
    if body.len() < 48 || &body[..8] != MAGIC {
        return Err("it is not a heads file".into());
    }
    if Sha256::digest(body).as_slice() != digest {
        return Err("its digest does not match (a torn or damaged file)".into());
    }
    let position = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let hash: [u8; 32] = body[16..48].try_into().expect("32 bytes");
    match revisions::read(&body[48..], false) {
        Ok((streams, [])) => Ok(Some(Saved {
            position,
            hash,
            streams,
        })),
        Ok(_) => Err("bytes follow its streams".into()),
        Err(e) => Err(e),
    }
}

/// The thread that writes the heads the writer hands it.
pub(super) struct Saver {
    tx: Option<mpsc::SyncSender<Saved>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Saver {
    pub fn start(path: PathBuf) -> std::io::Result<Saver> {
        // One waiting: a checkpoint that finds one still waiting is skipped (the next covers
        // it), never queued behind it.
        let (tx, rx) = mpsc::sync_channel::<Saved>(1);
        let thread = std::thread::Builder::new()
            .name("palmgate-heads".into())
            .spawn(move || {
                crate::background_priority();
                while let Ok(saved) = rx.recv() {
                    let started = std::time::Instant::now();
                    match write(&path, &saved) {
                        Ok(()) => tracing::debug!(
                            position = saved.position,
                            streams = saved.streams.len(),
                            ms = started.elapsed().as_millis() as u64,
                            "stream heads saved"
                        ),
                        Err(e) => tracing::warn!(
                            error = %e,
                            file = %path.display(),
                            "could not save the stream heads (the next start-up reads more of \
                             the log)"
                        ),
                    }
                    // The shards it shared with the writer are let go here.
                    drop(saved);
                }
            })?;
        Ok(Saver {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands `saved` to the thread; false when one is still waiting (the thread is behind).
    pub fn offer(&self, saved: Saved) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.try_send(saved).is_ok())
    }

    /// Saves `saved` after what is waiting, and waits until the thread has written everything
    /// (closing).
    pub fn finish(mut self, saved: Option<Saved>) {
        if let (Some(tx), Some(saved)) = (self.tx.as_ref(), saved) {
            let _ = tx.send(saved);
        }
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> Saved {
        Saved {
            position: 42,
            hash: [7; 32],
            streams: (0..100).map(|i| (format!("session-{i}"), i)).collect(),
        }
    }

    /// What is written reads back; a file cut short, changed or of another kind is refused
    /// saying so; no file is none; the file is private.
    #[test]
    fn round_trip_and_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("events.db"));
        assert!(read(&path).unwrap().is_none());
        write(&path, &saved()).unwrap();
        let back = read(&path).unwrap().unwrap();
        assert_eq!(
            (back.position, back.hash, back.streams),
            (42, [7; 32], saved().streams)
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!path.with_extension("heads.tmp").exists());
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(read(&path).unwrap_err().contains("digest"));
        let mut flipped = good.clone();
        flipped[60] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(read(&path).unwrap_err().contains("digest"));
        std::fs::write(&path, b"short").unwrap();
        assert!(read(&path).is_err());
        let mut other = good.clone();
        other[0] = b'X';
        std::fs::write(&path, &other).unwrap();
        assert!(read(&path).unwrap_err().contains("not a heads file"));
    }

    /// The saver writes what it is handed, in order, and `finish` waits for the last one.
    #[test]
    fn the_saver_writes_the_last_heads_before_it_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("events.db"));
        let saver = Saver::start(path.clone()).unwrap();
        let _ = saver.offer(saved());
        let mut last = saved();
        last.position = 43;
        last.streams.insert("site".into(), 9);
        saver.finish(Some(last));
        let back = read(&path).unwrap().unwrap();
        assert_eq!((back.position, back.streams.get("site")), (43, Some(&9)));
    }
}
