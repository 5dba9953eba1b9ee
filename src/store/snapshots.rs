//! Snapshot files beside the log: `<log>.snapshots/<position>.snap`, one file per snapshot.
//!
//! A file is a fixed header — magic, state schema, position, SHA-256 hash of the log's event at
//! that position, SHA-256 digest and length of the payload — followed by the payload (the
//! encoded state, see `core::snapshot`). They live in their own files, not in the log's SQLite
//! database, so writing one never holds the log's write lock and never grows its WAL.
//!
//! Invariants: a file is written under a temporary name, synced, then renamed, so a crash
//! leaves either the whole snapshot or none; [`SnapshotDir::read`] returns a payload only if
//! its digest matches. This module checks the bytes only: whether a snapshot belongs to the log
//! (its position's hash) and to this build (its schema) is the caller's decision. Snapshots are
//! a cache: deleting the directory costs one full fold at the next start, nothing else.

use super::StoreError;
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PGSNAP01";
/// magic (8) + schema (4) + position (8) + event hash (32) + payload digest (32) + length (8).
const HEADER: usize = 92;
const SUFFIX: &str = "snap";

/// What a snapshot file's header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Global position of the last event folded in.
    pub position: u64,
    /// `hash` of the log's event at `position`.
    pub hash: [u8; 32],
    /// `core::snapshot::SCHEMA` of the writer.
    pub schema: u32,
    /// Payload length in bytes.
    pub len: u64,
    digest: [u8; 32],
    path: PathBuf,
}

impl SnapshotInfo {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The snapshot directory of one log.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("snapshot {what} {}: {e}", path.display()))
}

impl SnapshotDir {
    /// `<log>.snapshots` next to the log file (created on the first write).
    pub fn beside(log: &Path) -> SnapshotDir {
        let mut name = log.file_name().unwrap_or_default().to_os_string();
        name.push(".snapshots");
        SnapshotDir {
            dir: log.with_file_name(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Every readable snapshot header, newest (highest position) first. Files whose header
    /// cannot be read are skipped with a warning; a missing directory is an empty list.
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io("directory", &self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| io("directory", &self.dir, e))?.path();
            if path.extension().is_none_or(|x| x != SUFFIX) {
                continue;
            }
            match read_header(&path) {
                Ok(info) => out.push(info),
                Err(e) => tracing::warn!(error = %e, "snapshot file skipped"),
            }
        }
        out.sort_by_key(|i| std::cmp::Reverse(i.position));
        Ok(out)
    }

    /// The payload of `info`, checked against the digest in its header.
    pub fn read(&self, info: &SnapshotInfo) -> Result<Vec<u8>, StoreError> {
        let mut f = std::fs::File::open(&info.path).map_err(|e| io("open", &info.path, e))?;
        let mut header = [0u8; HEADER];
        f.read_exact(&mut header)
            .map_err(|e| io("read", &info.path, e))?;
        if parse_header(&header, &info.path)? != *info {
            return Err(io("read", &info.path, "changed since it was listed"));
        }
        // The length is checked against the file before anything is allocated: a flipped bit
        // in the header's length must not ask for an impossible amount of memory.
        let file_len = f.metadata().map_err(|e| io("read", &info.path, e))?.len();
        let held = file_len.saturating_sub(HEADER as u64);
        if held != info.len {
            return Err(io(
                "read",
                &info.path,
                format!(
                    "the header's payload length ({} bytes) does not match the file \
                     ({held} bytes after the {HEADER}-byte header)",
                    info.len
                ),
            ));
        }
        let mut payload = Vec::with_capacity(usize::try_from(held).unwrap_or(0));
        // Never more than the header says, plus one byte to notice a file that grew since.
        f.take(info.len.saturating_add(1))
            .read_to_end(&mut payload)
            .map_err(|e| io("read", &info.path, e))?;
        if payload.len() as u64 != info.len {
            return Err(io(
                "read",
                &info.path,
                format!(
                    "payload is {} bytes, header says {}",
                    payload.len(),
                    info.len
                ),
            ));
        }
        if <[u8; 32]>::from(Sha256::digest(&payload)) != info.digest {
            return Err(io("read", &info.path, "payload digest mismatch"));
        }
        Ok(payload)
    }

    /// Writes a snapshot atomically (temporary file, fsync, rename, directory fsync), its
    /// payload written by `payload` as it is produced: the digest and length are taken on the
    /// way to the file and the header filled in last, so the payload is never held in memory
    /// whole (a large state's encoding is 100+ MB).
    pub fn write(
        &self,
        position: u64,
        hash: [u8; 32],
        schema: u32,
        payload: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<SnapshotInfo, StoreError> {
        create_private_dir(&self.dir).map_err(|e| io("directory", &self.dir, e))?;
        let path = self.dir.join(format!("{position:020}.{SUFFIX}"));
        let tmp = self.dir.join(format!("{position:020}.tmp"));
        let written = (|| {
            let mut file = create_private_file(&tmp)?;
            // The header's place; it is written once the digest and length are known.
            file.write_all(&[0; HEADER])?;
            let mut out = BufWriter::with_capacity(
                1 << 20,
                Digesting {
                    file,
                    digest: Sha256::new(),
                    len: 0,
                },
            );
            payload(&mut out)?;
            let Digesting {
                mut file,
                digest,
                len,
            } = out.into_inner().map_err(|e| e.into_error())?;
            let info = SnapshotInfo {
                position,
                hash,
                schema,
                len,
                digest: digest.finalize().into(),
                path: path.clone(),
            };
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header_bytes(&info))?;
            file.sync_all()?;
            Ok::<_, std::io::Error>(info)
        })();
        let info = match written {
            Ok(info) => info,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("write", &tmp, e));
            }
        };
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", &tmp, e))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(info)
    }

    /// Keeps the `keep` newest snapshots at or before `head` (the log's position when the
    /// caller last wrote one) and deletes the rest — a snapshot past `head` was taken of
    /// another log — as well as leftover temporary files.
    pub fn prune(&self, keep: usize, head: u64) -> Result<(), StoreError> {
        let (past, upto): (Vec<_>, Vec<_>) =
            self.list()?.into_iter().partition(|i| i.position > head);
        for info in past.iter().chain(upto.iter().skip(keep)) {
            std::fs::remove_file(&info.path).map_err(|e| io("delete", &info.path, e))?;
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for p in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
                if p.extension().is_some_and(|x| x == "tmp") {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        Ok(())
    }
}

/// Creates the snapshot directory with mode 0700 (whatever the umask) when it does not exist:
/// snapshots hold external ids, metadata, sealed templates and delivery bodies, like the log
/// (created 0600). A directory that already exists keeps its mode.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

/// Creates (or truncates) a snapshot's temporary file with mode 0600, whatever the umask or
/// the mode of a leftover file of that name.
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        let file = opts.open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    opts.open(path)
}

/// The payload's way to its file (behind a buffer): digested and counted as it passes.
struct Digesting {
    file: std::fs::File,
    digest: Sha256,
    len: u64,
}

impl Write for Digesting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.digest.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn header_bytes(info: &SnapshotInfo) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&info.schema.to_le_bytes());
    h.extend_from_slice(&info.position.to_le_bytes());
    h.extend_from_slice(&info.hash);
    h.extend_from_slice(&info.digest);
    h.extend_from_slice(&info.len.to_le_bytes());
    h
}

fn read_header(path: &Path) -> Result<SnapshotInfo, StoreError> {
    let mut header = [0u8; HEADER];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|e| io("header of", path, e))?;
    parse_header(&header, path)
}

fn parse_header(h: &[u8; HEADER], path: &Path) -> Result<SnapshotInfo, StoreError> {
    if &h[..8] != MAGIC {
        return Err(io("header of", path, "not a palmgate snapshot"));
    }
    let arr =
        |range: std::ops::Range<usize>| -> [u8; 32] { h[range].try_into().expect("32-byte field") };
    Ok(SnapshotInfo {
        schema: u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")),
        position: u64::from_le_bytes(h[12..20].try_into().expect("8 bytes")),
        hash: arr(20..52),
        digest: arr(52..84),
        len: u64::from_le_bytes(h[84..92].try_into().expect("8 bytes")),
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_list_read_prune() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::beside(&dir.path().join("events.db"));
        assert_eq!(snaps.list().unwrap(), vec![]);
        for p in [10u64, 30, 20] {
            snaps
                .write(p, [p as u8; 32], 7, |out| {
                    out.write_all(format!("state at {p}").as_bytes())
                })
                .unwrap();
        }
        let list = snaps.list().unwrap();
        let positions: Vec<u64> = list.iter().map(|i| i.position).collect();
        assert_eq!(positions, [30, 20, 10]);
        assert_eq!((list[0].hash, list[0].schema), ([30; 32], 7));
        assert_eq!(snaps.read(&list[0]).unwrap(), b"state at 30");
        snaps.prune(2, 30).unwrap();
        let positions: Vec<u64> = snaps.list().unwrap().iter().map(|i| i.position).collect();
        assert_eq!(positions, [30, 20]);
        snaps.prune(2, 25).unwrap();
        let positions: Vec<u64> = snaps.list().unwrap().iter().map(|i| i.position).collect();
        assert_eq!(
            positions,
            [20],
            "a snapshot past the head is of another log"
        );
    }

    #[test]
    fn a_payload_in_parts_is_the_same_file_and_a_failed_one_leaves_none() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::beside(&dir.path().join("events.db"));
        let whole = snaps
            .write(7, [2; 32], 3, |out| out.write_all(b"one two three"))
            .unwrap();
        let whole_bytes = std::fs::read(whole.path()).unwrap();
        std::fs::remove_file(whole.path()).unwrap();
        let streamed = snaps
            .write(7, [2; 32], 3, |out| {
                for part in ["one", " two", " three"] {
                    out.write_all(part.as_bytes())?;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(streamed, whole);
        assert_eq!(std::fs::read(streamed.path()).unwrap(), whole_bytes);
        assert_eq!(snaps.read(&streamed).unwrap(), b"one two three");

        let err = snaps
            .write(8, [3; 32], 3, |out| {
                out.write_all(b"half a state")?;
                Err(std::io::Error::other("encoder gave up"))
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("encoder gave up"), "{err}");
        let names: Vec<_> = std::fs::read_dir(snaps.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            [format!("{:020}.snap", 7)],
            "no file of the failed write"
        );
    }

    #[test]
    fn a_changed_payload_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::beside(&dir.path().join("events.db"));
        let info = snaps
            .write(5, [1; 32], 1, |out| out.write_all(b"hello snapshot"))
            .unwrap();
        let mut bytes = std::fs::read(info.path()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(info.path(), bytes).unwrap();
        let listed = snaps.list().unwrap();
        let err = snaps.read(&listed[0]).unwrap_err().to_string();
        assert!(err.contains("digest"), "{err}");
    }

    /// Flips the bit a reviewer flipped: byte 90 of the header (the payload length's 7th byte),
    /// which makes the length 2^48 bytes more than the file holds.
    fn flip_length_bit(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[90] ^= 0x01;
        std::fs::write(path, bytes).unwrap();
    }

    /// A header whose payload length does not match the file is refused with an error saying
    /// so, before any allocation of that length (before the fix: "memory allocation of
    /// 281474976710... bytes failed" and the process aborted).
    #[test]
    fn a_snapshot_whose_length_does_not_match_its_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::beside(&dir.path().join("events.db"));
        let info = snaps
            .write(5, [1; 32], 1, |out| out.write_all(b"hello snapshot"))
            .unwrap();
        flip_length_bit(info.path());
        let listed = snaps.list().unwrap();
        assert_eq!(listed[0].len, 14 + (1 << 48));
        let err = snaps.read(&listed[0]).unwrap_err().to_string();
        assert!(
            err.contains(
                "header's payload length (281474976710670 bytes) does not match the file (14 bytes"
            ),
            "{err}"
        );
        assert!(err.contains(&info.path().display().to_string()), "{err}");

        // Shorter than the header says, by one byte: refused the same way.
        let info = snaps
            .write(6, [1; 32], 1, |out| out.write_all(b"hello again"))
            .unwrap();
        let bytes = std::fs::read(info.path()).unwrap();
        std::fs::write(info.path(), &bytes[..bytes.len() - 1]).unwrap();
        let err = snaps.read(&info).unwrap_err().to_string();
        assert!(err.contains("does not match the file (10 bytes"), "{err}");
    }

    /// Start-up (`app::snapshot::load`) with the newest snapshot's length corrupted ignores it
    /// and starts from the older one, plus the log after it.
    #[tokio::test]
    async fn start_up_falls_back_to_the_older_snapshot_when_the_newest_length_is_corrupt() {
        use crate::app::snapshot;
        use crate::core::{Event, Expected, Rules, SessionId, StreamAppend};
        use crate::store::{EventStore, SqliteStore};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("events.db")).unwrap();
        let mut positions = vec![];
        for i in 1..=6u8 {
            let batch = vec![StreamAppend {
                stream: format!("session-{i}"),
                expected: Expected::NoStream,
                events: vec![Event::SessionExpired {
                    session_id: SessionId::from_random([i; 16]),
                    at: chrono::Utc::now(),
                }],
            }];
            store.append(batch, chrono::Utc::now()).await.unwrap();
            if i % 3 == 0 {
                let loaded = snapshot::load(&store, Rules::default()).unwrap();
                let info = snapshot::write(&store, &loaded.state).unwrap().unwrap();
                positions.push(info.position);
            }
        }
        let snaps = store.snapshots().unwrap();
        let list = snaps.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].position, positions[1]);
        assert_eq!(
            snapshot::load(&store, Rules::default()).unwrap().snapshot,
            Some(positions[1])
        );

        flip_length_bit(list[0].path());
        let loaded = snapshot::load(&store, Rules::default()).unwrap();
        assert_eq!(
            loaded.snapshot,
            Some(positions[0]),
            "the older snapshot is used"
        );
        assert_eq!(loaded.folded, positions[1] - positions[0]);
        assert_eq!(loaded.state.position(), positions[1]);
    }

    /// The snapshot directory palmgate creates is 0700 and every snapshot file 0600 (they hold
    /// external ids, metadata, sealed templates and delivery bodies), also when a leftover
    /// temporary file of the same name was world-readable; a directory that already existed
    /// keeps its mode.
    #[cfg(unix)]
    #[test]
    fn snapshots_and_their_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let snaps = SnapshotDir::beside(&dir.path().join("events.db"));
        let info = snaps
            .write(3, [1; 32], 1, |out| out.write_all(b"state"))
            .unwrap();
        assert_eq!(mode(snaps.path()), 0o700, "the directory");
        assert_eq!(mode(info.path()), 0o600, "the snapshot");

        let tmp = snaps.path().join(format!("{:020}.tmp", 4));
        std::fs::write(&tmp, b"left over").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        let info = snaps
            .write(4, [1; 32], 1, |out| out.write_all(b"state"))
            .unwrap();
        assert_eq!(mode(info.path()), 0o600, "over a leftover temporary file");

        let other = SnapshotDir::beside(&dir.path().join("other.db"));
        std::fs::create_dir(other.path()).unwrap();
        std::fs::set_permissions(other.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let info = other
            .write(1, [1; 32], 1, |out| out.write_all(b"state"))
            .unwrap();
        assert_eq!(
            mode(other.path()),
            0o750,
            "an existing directory keeps its mode"
        );
        assert_eq!(mode(info.path()), 0o600);
    }
}
