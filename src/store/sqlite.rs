//! The embedded backend: one SQLite file, WAL, one writer thread with group commit, and every
//! commit fsync'd before it is acknowledged.
//!
//! Every `append` is a request to the writer thread. The writer takes the first waiting
//! request, drains every other one already queued, checks each against the stream heads, writes
//! all that pass in ONE transaction, and hands the committed group to the syncer thread, which
//! fsyncs the WAL (`fdatasync`; the directory once, when it first opens the WAL) and only then
//! answers each caller. The fsync of one group overlaps the writing of the next (pipelined
//! group commit): the writer connection runs `synchronous=NORMAL`, which leaves the per-commit
//! WAL sync to the syncer, and the syncer gives the guarantee `synchronous=FULL` gives — a
//! commit is on disk before anyone hears of it. (SQLite still syncs the WAL before each
//! checkpoint and the database file after it.) At start-up `open` fsyncs whatever `-wal` it
//! finds, the database file and their directory before it shows any event: a process killed
//! between a commit and its fsync leaves frames that may be in the page cache only. WAL checkpoints run on a thread of their own,
//! every 4000 committed requests, and the writer copies only the frames committed during
//! each pass (`Checkpointer`), not the whole WAL inside a commit. A request whose expected
//! revision fails is refused alone; the others still commit. If the commit fails, every
//! caller in the group gets the error, nothing is acknowledged, and the store marks itself
//! unhealthy. If an fsync fails, nothing written since the last good one is acknowledged, and
//! the store stays unhealthy until a restart: after a failed fsync the kernel may have dropped
//! pages SQLite believes written.
//!
//! While unhealthy (a full disk, an I/O error, the file locked by another process past the
//! busy timeout) every request is refused at once, and every [`PROBE_EVERY`] (whether requests
//! keep coming or not) the writer probes the file, without waiting on another process's lock:
//! the log's last row must still be the head the writer knows (the failed transaction left
//! nothing behind), and a probe transaction must commit — one that inserts a row into `events`
//! and deletes it again (the log is unchanged, but the append path is exercised) and writes
//! [`PROBE_BYTES`] into a side table (`store_probe`, never read as events, emptied right
//! after), so a disk with a few bytes left is not taken for a writable one. Then the store is
//! healthy again — no restart needed. A log whose last row is not the known head (a commit
//! reported failed that reached the file anyway) stays unhealthy: the in-memory state lacks
//! those events, and only a restart folds them in.

use super::chain::{RawEvent, RawRef};
use super::group::{Forgetting, StagedGroup, WriteReq, answer, stage_group};
use super::heads_file;
use super::{BoxFuture, EventStore, SnapshotDir, StoreError};
use crate::core::split_map::revisions;
use crate::core::{Recorded, StreamAppend};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Most requests one group commit takes.
const MAX_GROUP: usize = 4096;

/// How often an unhealthy store checks whether it can write again.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// What a probe writes (then deletes): room for many ordinary groups, so a disk with a few
/// bytes left is not reported writable.
pub const PROBE_BYTES: i64 = 64 * 1024;

pub struct SqliteStore {
    tx: Mutex<Option<mpsc::Sender<WriteReq>>>,
    /// Idle read connections (see [`Readers`]).
    readers: Readers,
    healthy: Arc<AtomicBool>,
    path: PathBuf,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    snapshots: SnapshotDir,
    forgetting: Arc<Forgetting>,
    /// Position of the last event known to be on disk (fsync'd). Reads stop there: the writer
    /// commits a group before the syncer makes it durable, and what a read returns is visible
    /// outside (the admin event API, a snapshot), which SPEC 8.1 allows only of durable events.
    on_disk: Arc<AtomicU64>,
    /// The exclusive lock on `<path>.lock` ([`lock_store`]), held until [`SqliteStore::close`]:
    /// one writing process per log. `None` for a read-only store.
    lock: Mutex<Option<std::fs::File>>,
    /// [`EventStore::saved_head`]: read by [`SqliteStore::open_read_only`] in the snapshot its
    /// reads stop at; `Ok(None)` for a writing store.
    saved: SavedHead,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The lock file beside the log at `path`: `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Takes the exclusive advisory lock (`flock`) on `<path>.lock`, created mode 0600: a second
/// process writing the same log would wedge the first (its writer's heads no longer match the
/// file). The lock belongs to the open file: a second open in the same process is refused too,
/// and it goes when the returned file is closed (or the process ends, however it ends).
fn lock_store(path: &Path) -> Result<std::fs::File, StoreError> {
    lock_beside(path, "store.path").map_err(io)
}

/// The exclusive lock on `<path>.lock` for the file the config key `key` names (see
/// [`lock_store`]); the error names the key, the file and the lock file.
pub fn lock_beside(path: &Path, key: &str) -> Result<std::fs::File, String> {
    let lock = lock_path(path);
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts
        .open(&lock)
        .map_err(|e| format!("cannot open the lock file {}: {e}", lock.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "{key} {} is in use by another palmgate process (it holds the lock on {})",
            path.display(),
            lock.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", lock.display())),
    }
}

/// Creates the log's file with mode 0600 when it does not exist yet, before SQLite opens it:
/// the log holds names, metadata and door movements, and SQLite creates its `-wal` and `-shm`
/// files with the database file's permissions (under the usual umask it would create all
/// three world-readable). An existing file keeps its mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(format!("cannot create {}: {e}", path.display()))),
    }
}

/// Refuses a log that no longer holds what it acknowledged: the mark beside it
/// ([`super::acked`]) names an event past the log's end (`last`), or one whose hash differs.
/// An unreadable mark is only warned about (it is a detection aid, not the log).
fn check_acked(conn: &Connection, acked: &Path, last: u64) -> Result<(), StoreError> {
    let mark = match super::acked::read(acked) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::warn!("{e}: ignored (it only helps find acknowledged events lost)");
            return Ok(());
        }
    };
    let aside = format!(
        "to start from this log anyway (a backup restored on purpose), move {} aside",
        acked.display()
    );
    if mark.position > last {
        return Err(io(format!(
            "the log ends at position {last}, but position {} was acknowledged (made durable) \
             before: events {}..={} are gone (was the -wal file removed or damaged after a \
             crash? it holds the newest events until a checkpoint); restore them from a \
             backup, or, {aside}",
            mark.position,
            last + 1,
            mark.position
        )));
    }
    let hash: Option<Vec<u8>> = conn
        .query_row(
            "SELECT hash FROM events WHERE position = ?1",
            [mark.position as i64],
            |r| r.get(0),
        )
        .optional()
        .map_err(io)?;
    if mark.position > 0 && hash.as_deref() != Some(&mark.hash[..]) {
        return Err(io(format!(
            "the event at position {} is not the one acknowledged there (hash {}): the log \
             was replaced or rewritten; {aside}",
            mark.position,
            hex::encode(mark.hash)
        )));
    }
    Ok(())
}

/// The log's write-ahead log: `<path>-wal`.
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Start-up, before anything the files hold is shown: fsyncs the `-wal` if there is one
/// (`fdatasync`), the database file and their directory. The writer commits a group before the
/// syncer fsyncs it, so after a kill -9 between the two the WAL may hold committed frames that
/// are only in the page cache; a power cut after the restart showed them would lose events a
/// partner saw (SPEC 8.1).
fn sync_at_open(path: &Path) -> Result<(), StoreError> {
    let cannot = |what: &Path, e: std::io::Error| {
        io(format!(
            "store.path {}: cannot fsync {}: {e}",
            path.display(),
            what.display()
        ))
    };
    let wal = wal_path(path);
    match std::fs::File::open(&wal) {
        Ok(f) => {
            f.sync_data().map_err(|e| cannot(&wal, e))?;
            synced_at_open(&wal);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(cannot(&wal, e)),
    }
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| cannot(path, e))?;
    synced_at_open(path);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| cannot(dir, e))?;
    synced_at_open(dir);
    Ok(())
}

#[cfg(test)]
thread_local! {
    /// What [`sync_at_open`] fsync'd on this thread (tests only).
    static SYNCED_AT_OPEN: std::cell::RefCell<Vec<PathBuf>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
fn synced_at_open(p: &Path) {
    SYNCED_AT_OPEN.with(|s| s.borrow_mut().push(p.to_path_buf()));
}

#[cfg(not(test))]
fn synced_at_open(_: &Path) {}

/// How long a write waits for a lock another process holds on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(io)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(io)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(io)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(io)?;
    Ok(conn)
}

/// A read connection of a read-only store ([`SqliteStore::open_read_only`]): `uri` opened
/// read-only, with the busy timeout and nothing else (the pragmas of [`open_conn`] write).
fn open_reader(uri: &Path) -> Result<Connection, rusqlite::Error> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(uri, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// `file:<path>?<query>`, the path percent-encoded.
fn read_only_uri(path: &Path, query: &str) -> PathBuf {
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push('?');
    uri.push_str(query);
    PathBuf::from(uri)
}

/// The file's SQLite header says WAL mode (its read and write versions are 2).
fn in_wal_mode(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| header.starts_with(b"SQLite format 3\0") && header[18..20] == [2, 2])
}

/// A read-only read failed for want of write access (the `-shm` of a WAL log cannot be
/// created or written).
fn needs_write_access(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen)
    )
}

/// What the head the log saved says ([`EventStore::saved_head`]).
type SavedHead = Result<Option<(u64, [u8; 32])>, StoreError>;

/// The first connection of a read-only store and what it found, in one read transaction.
struct ReadOnlyLog {
    conn: Connection,
    /// `None`: no palmgate event log. Else the last position and the saved head, of the same
    /// snapshot of the file.
    found: Option<(u64, SavedHead)>,
}

impl ReadOnlyLog {
    fn open(uri: &Path) -> Result<ReadOnlyLog, rusqlite::Error> {
        use rusqlite::ErrorCode;
        let conn = open_reader(uri)?;
        let found = {
            // One snapshot: a writer saves its head after the events it covers, so in any
            // snapshot of an untouched log the saved head is at or before the last event.
            let tx = rusqlite::Transaction::new_unchecked(
                &conn,
                rusqlite::TransactionBehavior::Deferred,
            )?;
            let tables = |name: &str| {
                tx.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
                    [name],
                    |r| r.get::<_, i64>(0),
                )
            };
            match tables("events") {
                Ok(1) => {
                    let last: i64 =
                        tx.query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| {
                            r.get(0)
                        })?;
                    let saved = if tables("store_heads")? == 1 {
                        saved_head_row(&tx)?
                    } else {
                        Ok(None)
                    };
                    Some((last.max(0) as u64, saved))
                }
                Ok(_) => None,
                Err(e) if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) => None,
                Err(e) => return Err(e),
            }
        };
        Ok(ReadOnlyLog { conn, found })
    }
}

/// The row of `store_heads` as a saved head: `Ok(None)` when there is none (or its position
/// is 0, which says nothing); a row palmgate cannot have written (a position that is not a
/// non-negative integer, a hash that is not 32 bytes) is [`StoreError::Corrupt`].
fn saved_head_row(conn: &Connection) -> Result<SavedHead, rusqlite::Error> {
    use rusqlite::types::Value;
    let row: Option<(Value, Value)> = conn
        .query_row(
            "SELECT position, hash FROM store_heads WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((position, hash)) = row else {
        return Ok(Ok(None));
    };
    let bad = |position: u64, what: String| StoreError::Corrupt {
        position,
        reason: format!("the head the log saved (table store_heads) {what}"),
    };
    let position = match position {
        Value::Integer(0) => return Ok(Ok(None)),
        Value::Integer(p) if p > 0 => p as u64,
        other => return Ok(Err(bad(0, format!("has the position {other:?}")))),
    };
    Ok(match hash {
        Value::Blob(b) => match <[u8; 32]>::try_from(&b[..]) {
            Ok(h) => Ok(Some((position, h))),
            Err(_) => Err(bad(
                position,
                format!("has a hash of {} bytes, not 32", b.len()),
            )),
        },
        other => Err(bad(position, format!("has the hash {other:?}"))),
    })
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY,
    stream      TEXT    NOT NULL,
    revision    INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    recorded_at TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    prev_hash   BLOB    NOT NULL,
    hash        BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS store_heads (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL,
    hash     BLOB    NOT NULL,
    heads    BLOB    NOT NULL
);";

/// Every this many events the writer saves the stream heads ([`HeadsCheckpoint`]), so that
/// opening the log reads only the events after the checkpoint, not all of them.
pub const CHECKPOINT_EVERY: u64 = 250_000;

impl SqliteStore {
    /// Opens (creating if needed) the log at `path` and starts its writer thread.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                io(format!(
                    "store.path {}: cannot create {}: {e}",
                    path.display(),
                    dir.display()
                ))
            })?;
        }
        let lock = lock_store(&path)?;
        create_private(&path)?;
        // What the files hold may never have been fsync'd (a kill -9 between a commit and its
        // fsync): made durable before any of it is shown (`on_disk` below).
        sync_at_open(&path)?;
        // A start-up error names the file and its config key (a corrupt file's SQLite error
        // alone, "file is not a database", does not say which file).
        let named = |e: StoreError| match e {
            StoreError::Io(m) => io(format!("store.path {}: {m}", path.display())),
            e => e,
        };
        let conn = open_conn(&path).map_err(named)?;
        conn.execute_batch(SCHEMA).map_err(io).map_err(named)?;
        // The syncer makes each commit durable before it is answered (module docs).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(io)
            .map_err(named)?;
        // WAL checkpoints run on their own thread (`Checkpointer`), not inside a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(io)
            .map_err(named)?;
        let heads_at = heads_file::path_beside(&path);
        let heads = load_heads(&conn, &heads_at).map_err(named)?;
        let acked_at = super::acked::path_beside(&path);
        check_acked(&conn, &acked_at, heads.position).map_err(named)?;
        let saver = heads_file::Saver::start(heads_at).map_err(io)?;
        let checkpointer = Checkpointer::start(open_conn(&path).map_err(named)?)?;
        let readers = Readers::new(path.clone(), open_conn(&path).map_err(named)?);
        let healthy = Arc::new(AtomicBool::new(true));
        let sync_failed = Arc::new(AtomicBool::new(false));
        let (durable, committed) = mpsc::channel();
        // Whatever the files held at start-up was fsync'd above (`sync_at_open`): durable.
        let on_disk = Arc::new(AtomicU64::new(heads.position));
        let syncer = Syncer {
            wal: wal_path(&path),
            file: None,
            healthy: healthy.clone(),
            failed: sync_failed.clone(),
            on_disk: on_disk.clone(),
            acked: super::acked::Writer::new(acked_at),
        };
        let syncer = std::thread::Builder::new()
            .name("palmgate-wal-sync".into())
            .spawn(move || syncer.run(committed))
            .map_err(io)?;
        let (tx, rx) = mpsc::channel();
        let h = healthy.clone();
        let forgetting = Arc::new(Forgetting::default());
        let f = forgetting.clone();
        let writer = std::thread::Builder::new()
            .name("palmgate-store-writer".into())
            .spawn(move || {
                Writer {
                    conn,
                    heads,
                    diverged: false,
                    forgetting: f,
                    durable: Some(durable),
                    syncer: Some(syncer),
                    sync_failed,
                    checkpointer: Some(checkpointer),
                    saver: Some(saver),
                    overlay: Default::default(),
                }
                .run(rx, h)
            })
            .map_err(io)?;
        Ok(SqliteStore {
            tx: Mutex::new(Some(tx)),
            readers,
            healthy,
            snapshots: SnapshotDir::beside(&path),
            path,
            writer: Mutex::new(Some(writer)),
            forgetting,
            on_disk,
            lock: Mutex::new(Some(lock)),
            saved: Ok(None),
        })
    }

    /// Opens the log at `path` for reading only (`palmgate audit`): nothing is created or
    /// written (no schema, no writer, no `-wal` or `-shm` the log did not have; an append
    /// answers [`StoreError::Closed`]), and reads stop at the last event the file held when
    /// opened. `Ok(None)` when the file is no palmgate event log (not SQLite, or no `events`
    /// table).
    ///
    /// How it reads (connections from [`open_reader`], never [`open_conn`]: no journal-mode
    /// or synchronous pragma, which write, or fail on a log in rollback-journal mode such as a
    /// `VACUUM INTO` copy):
    /// - a log in WAL mode with no `-wal` beside it is read as an immutable file (URI
    ///   `mode=ro&immutable=1`: no locks, no side files). No process has it open (SQLite
    ///   removes the `-wal` when the last connection closes, and a writer keeps it while
    ///   open), so nothing is missed; a shared read would create `-wal` and `-shm` and, unable
    ///   to checkpoint, leave them behind;
    /// - otherwise it is read as SQLite shares a file (`mode=ro`): beside a running server too,
    ///   whose `-wal` it reads (WAL lets it read while the writer appends);
    /// - a shared read that fails with `SQLITE_READONLY` or `SQLITE_CANTOPEN` (no write
    ///   access to the directory for a `-shm` a WAL log needs) is retried as an immutable file
    ///   if the `-wal` holds nothing (absent or empty); a `-wal` holding frames an immutable read
    ///   would ignore makes it an error instead, as does a failure of both.
    ///
    /// An immutable read is a static snapshot: it is only right while nothing writes the
    /// log. A server started on the log during such an audit may make it fail (SQLite then
    /// reads pages the server's checkpoint rewrites); audit a log no server has open, or one
    /// whose server runs as a user who can write the directory (then the `-wal` exists and the
    /// read is shared).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Option<SqliteStore>, StoreError> {
        let path = path.as_ref().to_path_buf();
        let shared = read_only_uri(&path, "mode=ro");
        let immutable = read_only_uri(&path, "mode=ro&immutable=1");
        let wal = wal_path(&path);
        // The `-wal`'s length, `None` when there is none (or it cannot be seen).
        let wal_len = std::fs::metadata(&wal).ok().map(|m| m.len());
        let cannot = |e: &dyn std::fmt::Display| {
            io(format!("cannot read {} read-only: {e}", path.display()))
        };
        let first = if wal_len.is_none() && in_wal_mode(&path) {
            &immutable
        } else {
            &shared
        };
        let opened = match ReadOnlyLog::open(first) {
            Err(e) if std::ptr::eq(first, &shared) && needs_write_access(&e) => match wal_len {
                Some(n) if n > 0 => Err(cannot(&format!(
                    "{e} (and {} holds {n} bytes of events that reading the file alone would \
                     miss)",
                    wal.display()
                ))),
                _ => ReadOnlyLog::open(&immutable)
                    .map(|log| (log, &immutable))
                    .map_err(|e| cannot(&e)),
            },
            r => r.map(|log| (log, first)).map_err(|e| cannot(&e)),
        };
        let (log, uri) = opened?;
        let Some((last, saved)) = log.found else {
            return Ok(None);
        };
        let readers = Readers::with_opener(uri.clone(), log.conn, |p| {
            open_reader(p).map_err(|e| io(format!("cannot read {} read-only: {e}", p.display())))
        });
        Ok(Some(SqliteStore {
            tx: Mutex::new(None),
            readers,
            healthy: Arc::new(AtomicBool::new(true)),
            snapshots: SnapshotDir::beside(&path),
            path,
            writer: Mutex::new(None),
            forgetting: Arc::default(),
            on_disk: Arc::new(AtomicU64::new(last)),
            lock: Mutex::new(None),
            saved,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the writer after it has answered every queued request, then lets go of the
    /// log's lock (another `open` may write it from then on).
    pub fn close(&self) {
        self.tx.lock().expect("store lock").take();
        if let Some(w) = self.writer.lock().expect("store lock").take() {
            let _ = w.join();
        }
        // The read connections close too (a read in progress closes its own when it ends), so
        // the last connection to go checkpoints the WAL and removes `-wal` and `-shm`, even
        // while a task that outlives the server keeps this store alive.
        self.readers.close();
        self.lock.lock().expect("store lock").take();
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Read connections, checked out one per read: WAL lets readers run side by side, so
/// `audit verify`'s and start-up's decoding threads (and API reads) do not queue behind one
/// connection. A read with none idle opens one; at most [`Readers::IDLE`] are kept.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Set by [`Readers::close`]: a connection handed back is closed, not kept.
    closed: AtomicBool,
    /// Opens another connection to `path`.
    open: fn(&Path) -> Result<Connection, StoreError>,
}

impl Readers {
    const IDLE: usize = 4;

    fn new(path: PathBuf, first: Connection) -> Readers {
        Readers::with_opener(path, first, open_conn)
    }

    fn with_opener(
        path: PathBuf,
        first: Connection,
        open: fn(&Path) -> Result<Connection, StoreError>,
    ) -> Readers {
        Readers {
            path,
            idle: Mutex::new(vec![first]),
            closed: AtomicBool::new(false),
            open,
        }
    }

    /// Closes the idle connections; those checked out close when handed back.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let idle = std::mem::take(&mut *self.idle.lock().expect("store lock"));
        drop(idle);
    }

    fn take(&self) -> Result<Reader<'_>, StoreError> {
        let idle = self.idle.lock().expect("store lock").pop();
        let conn = match idle {
            Some(c) => c,
            None => (self.open)(&self.path)?,
        };
        Ok(Reader {
            pool: self,
            conn: Some(conn),
        })
    }
}

/// A checked-out read connection; back to the pool when dropped.
struct Reader<'a> {
    pool: &'a Readers,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut idle = self.pool.idle.lock().expect("store lock");
            if idle.len() < Readers::IDLE && !self.pool.closed.load(Ordering::Acquire) {
                idle.push(c);
            }
        }
    }
}

/// Each stream's last revision.
type StreamHeads = super::group::Heads;

struct Heads {
    position: u64,
    hash: [u8; 32],
    streams: StreamHeads,
    /// The position of the last saved checkpoint of `streams`.
    checkpoint: u64,
}

/// The stream heads as of one position: saved beside the log ([`heads_file`], written by a
/// thread of its own); the `store_heads` row (one) keeps their position and hash, and in a log
/// written before the file, the heads themselves.
///
/// Why it exists: the log has no index on `(stream, revision)`. Such an index puts each event
/// of a group commit in a different B-tree leaf, which costs a 4 KiB WAL page per event; the
/// writer checks expected revisions against its in-memory heads instead. Those heads are
/// rebuilt at start-up from this checkpoint plus the events after it. The checkpoint is only a
/// cache: one that does not match the log (its position past the end, or a different hash at
/// its position) is ignored and the heads are rebuilt from every event.
///
/// Encoding (of the row's blob, as of the file's streams): [`crate::core::split_map::revisions`]
/// (as the state snapshot's revisions), in the map's own order; anything else is refused.
struct HeadsCheckpoint;

impl HeadsCheckpoint {
    #[cfg(test)]
    fn encode(streams: &StreamHeads) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + streams.len() * 48);
        revisions::write(
            &mut out,
            streams.len(),
            streams.iter().map(|(s, r)| (s.as_str(), *r)),
        )
        .expect("a Vec takes every write, and a map's len is its entries");
        out
    }

    fn decode(b: &[u8]) -> Option<StreamHeads> {
        match revisions::read(b, false) {
            Ok((streams, [])) => Some(streams),
            _ => None,
        }
    }

    /// The saved heads if they belong to this log: `(position, streams)`. From the file beside
    /// the log ([`heads_file`]), or from the `store_heads` blob a log written before it holds
    /// (now written empty: the row keeps the position and hash).
    fn load(
        conn: &Connection,
        last: u64,
        file: &Path,
    ) -> Result<Option<(u64, StreamHeads)>, StoreError> {
        // Whether the log has `hash` at `position` (0: the empty log, which every log extends).
        let logged = |position: u64, hash: &[u8]| -> Result<bool, StoreError> {
            if position == 0 {
                return Ok(true);
            }
            if position > last {
                return Ok(false);
            }
            let at: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT hash FROM events WHERE position = ?1",
                    params![position as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(io)?;
            Ok(at.is_some_and(|h| h == hash))
        };
        match heads_file::read(file) {
            Ok(Some(saved)) if logged(saved.position, &saved.hash)? => {
                return Ok(Some((saved.position, saved.streams)));
            }
            Ok(Some(saved)) => tracing::warn!(
                position = saved.position,
                file = %file.display(),
                "the saved stream heads do not match the event log; rebuilding them from \
                 every event"
            ),
            Ok(None) => {}
            Err(why) => tracing::warn!(
                file = %file.display(),
                why,
                "the saved stream heads are ignored; rebuilding them from every event"
            ),
        }
        let row: Option<(i64, Vec<u8>, Vec<u8>)> = conn
            .query_row(
                "SELECT position, hash, heads FROM store_heads WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(io)?;
        let Some((position, hash, blob)) = row.filter(|(_, _, blob)| !blob.is_empty()) else {
            return Ok(None);
        };
        let position = position as u64;
        let matches = logged(position, &hash)?;
        match HeadsCheckpoint::decode(&blob).filter(|_| matches) {
            Some(streams) => Ok(Some((position, streams))),
            None => {
                tracing::warn!(
                    position,
                    "the saved stream heads do not match the event log; rebuilding them from \
                     every event"
                );
                Ok(None)
            }
        }
    }

    /// The row: the position and hash saved (the streams go to the file).
    fn save(conn: &Connection, heads: &Heads) -> Result<(), StoreError> {
        conn.execute(
            "INSERT OR REPLACE INTO store_heads (id, position, hash, heads) VALUES (1, ?1, ?2, x'')",
            params![heads.position as i64, &heads.hash[..]],
        )
        .map_err(io)?;
        Ok(())
    }
}

fn load_heads(conn: &Connection, file: &Path) -> Result<Heads, StoreError> {
    let last: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(io)?;
    let (position, hash) = match last {
        Some((p, h)) => (p as u64, to_hash(p as u64, &h)?),
        None => (0, [0; 32]),
    };
    let (checkpoint, mut streams) =
        HeadsCheckpoint::load(conn, position, file)?.unwrap_or_default();
    // Revisions grow with positions: the last row of a stream is its head.
    let mut stmt = conn
        .prepare("SELECT stream, revision FROM events WHERE position > ?1 ORDER BY position")
        .map_err(io)?;
    let mut rows = stmt.query(params![checkpoint as i64]).map_err(io)?;
    while let Some(r) = rows.next().map_err(io)? {
        let stream = r.get_ref(0).map_err(io)?.as_str().map_err(io)?;
        let revision = r.get::<_, i64>(1).map_err(io)? as u64;
        match streams.get_mut(stream) {
            Some(rev) => *rev = revision,
            None => {
                streams.insert(stream.to_string(), revision);
            }
        }
    }
    Ok(Heads {
        position,
        hash,
        streams,
        checkpoint,
    })
}

fn to_hash(position: u64, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt {
        position,
        reason: format!("hash is {} bytes, not 32", bytes.len()),
    })
}

struct Writer {
    conn: Connection,
    heads: Heads,
    /// The file's last row is not the head we know, or an fsync failed: only a restart can
    /// fold the file in.
    diverged: bool,
    forgetting: Arc<Forgetting>,
    /// Committed groups, to the syncer.
    durable: Option<mpsc::Sender<Committed>>,
    syncer: Option<std::thread::JoinHandle<()>>,
    /// Set by the syncer when an fsync failed.
    sync_failed: Arc<AtomicBool>,
    checkpointer: Option<Checkpointer>,
    /// Writes the stream heads beside the log ([`heads_file`]).
    saver: Option<heads_file::Saver>,
    /// Heads committed while the saver shares the map's shards (it encodes them for a few
    /// hundred ms): kept aside instead of copying every shard the writer touches (at 500k
    /// streams, ~60 ms of copies in the writer while every append waited), merged into the
    /// map once the saver lets go. Looked up before the map.
    overlay: super::group::Staged,
}

/// Requests committed between two WAL checkpoints: about SQLite's default of 1000 pages at
/// the ~1 KB of WAL an event costs.
const CHECKPOINT_REQUESTS: usize = 4000;

/// Copies the WAL back into the database (`PRAGMA wal_checkpoint(PASSIVE)`) on its own thread
/// and connection, woken by the writer every [`CHECKPOINT_REQUESTS`] requests. With SQLite's
/// auto-checkpoint the writer did it inside a commit: reading and writing ~4 MB and two
/// fsyncs while every append in flight waited (the commits with `commit_ms` ≥ 100 in the
/// slow-commit log). A passive checkpoint never blocks the writer. Under a steady load it
/// never copies everything either (frames keep coming during the pass), so after each pass the
/// writer copies the few frames committed during it ([`Checkpointer::finish`]), and the WAL
/// restarts from its beginning at the next commit. Measured (BENCHMARKS §1, session 7): the
/// store bench's append p99 at 64 writers 1.9–2.3 ms against 3.6–3.9 ms, throughput the same.
/// Durability is not involved: SQLite syncs the WAL before a checkpoint copies from it and the
/// database file after.
struct Checkpointer {
    wake: mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<()>,
    /// Requests committed since the last wake-up.
    since: usize,
    /// Set by the thread after each pass: the writer then copies what was committed during
    /// it ([`Checkpointer::finish`]).
    passed: Arc<AtomicBool>,
}

impl Checkpointer {
    fn start(conn: Connection) -> Result<Checkpointer, StoreError> {
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let passed = Arc::new(AtomicBool::new(false));
        let pass_done = passed.clone();
        let thread = std::thread::Builder::new()
            .name("palmgate-wal-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    passive_checkpoint(&conn, "pass");
                    pass_done.store(true, Ordering::Release);
                }
            })
            .map_err(io)?;
        Ok(Checkpointer {
            wake,
            thread,
            since: 0,
            passed,
        })
    }

    /// After a pass of the thread, copies on the writer's connection what was committed
    /// during it. The writer holds the write lock meanwhile, so this checkpoint reaches the
    /// end of the WAL, and the next commit starts the WAL again from its beginning (unless a
    /// reader still uses it) instead of growing it: without this step a passive checkpoint
    /// under a steady write load never caught up, and the WAL grew (23 MB in 3 s of the store
    /// bench), which slowed every fsync.
    fn finish(&self, conn: &Connection) {
        if self.passed.swap(false, Ordering::Acquire) {
            passive_checkpoint(conn, "tail");
        }
    }

    fn committed(&mut self, requests: usize) {
        self.since += requests;
        if self.since >= CHECKPOINT_REQUESTS {
            self.since = 0;
            // Full: one is already due, which covers these frames too.
            let _ = self.wake.try_send(());
        }
    }

    fn stop(self) {
        drop(self.wake);
        let _ = self.thread.join();
    }
}

/// `PRAGMA wal_checkpoint(PASSIVE)` on `conn`, timed in `palmgate_store_checkpoint_seconds`
/// by `step` (`pass`: the checkpoint thread; `tail`: the writer's copy of what came during it).
fn passive_checkpoint(conn: &Connection, step: &'static str) {
    let started = Instant::now();
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    }) {
        Ok((frames, copied)) => {
            metrics::histogram!("palmgate_store_checkpoint_seconds", "step" => step)
                .record(started.elapsed().as_secs_f64());
            tracing::debug!(frames, copied, step, "WAL checkpoint");
        }
        Err(e) => tracing::warn!(error = %e, step, "WAL checkpoint failed"),
    }
}

/// A group SQLite has committed (its WAL frames written), not yet known to be on disk.
struct Committed {
    accepted: Vec<(WriteReq, Vec<RawEvent>)>,
    started: Instant,
    commit: Duration,
}

/// Makes committed groups durable, in commit order, and only then answers their callers: one
/// `fdatasync` of the WAL covers every group committed before it started.
struct Syncer {
    wal: PathBuf,
    file: Option<std::fs::File>,
    healthy: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    /// Raised to the last position of what each good fsync covered, before its callers hear.
    on_disk: Arc<AtomicU64>,
    /// The acknowledged mark beside the log (`acked`), after callers heard.
    acked: super::acked::Writer,
}

impl Syncer {
    fn run(mut self, committed: mpsc::Receiver<Committed>) {
        self.serve(committed);
        // A clean stop: the mark names the last event made durable.
        self.acked.flush();
    }

    fn serve(&mut self, committed: mpsc::Receiver<Committed>) {
        while let Ok(first) = committed.recv() {
            let mut groups = vec![first];
            groups.extend(committed.try_iter());
            let started = Instant::now();
            let synced = if self.failed.load(Ordering::Acquire) {
                Err(StoreError::Io(
                    "an fsync of the event log failed; restart the server".into(),
                ))
            } else {
                self.sync()
            };
            let sync = started.elapsed();
            match synced {
                Ok(()) => {
                    metrics::histogram!("palmgate_store_fsync_seconds").record(sync.as_secs_f64());
                    let last = groups
                        .iter()
                        .flat_map(|g| g.accepted.iter().flat_map(|(_, rows)| rows.last()))
                        .max_by_key(|r| r.position)
                        .map(|r| super::acked::Mark {
                            position: r.position,
                            hash: r.hash,
                        });
                    if let Some(m) = last {
                        self.on_disk.fetch_max(m.position, Ordering::AcqRel);
                    }
                    let slow = Slow::of(&groups, sync);
                    for g in groups {
                        metrics::histogram!("palmgate_store_commit_seconds")
                            .record(g.started.elapsed().as_secs_f64());
                        for (req, rows) in g.accepted {
                            answer(req, rows);
                        }
                    }
                    if let Some(s) = slow {
                        s.warn();
                    }
                    if let Some(m) = last {
                        self.acked.durable(m);
                    }
                }
                Err(e) => {
                    // Unhealthy before anyone hears of the failure.
                    self.healthy.store(false, Ordering::Release);
                    if !self.failed.swap(true, Ordering::AcqRel) {
                        tracing::error!(
                            error = %e,
                            "fsync of the event log failed: nothing written since the last good \
                             fsync is acknowledged; refusing new work until a restart"
                        );
                    }
                    for g in groups {
                        for (req, _) in g.accepted {
                            let _ = req.reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        let file = match &mut self.file {
            Some(f) => f,
            None => {
                let cannot = |e: std::io::Error| io(format!("{}: {e}", self.wal.display()));
                let f = std::fs::File::open(&self.wal).map_err(cannot)?;
                // The WAL's directory entry, once: SQLite would sync it with the first commit
                // under `synchronous=FULL`.
                let dir = self
                    .wal
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(cannot)?;
                self.file.insert(f)
            }
        };
        file.sync_data().map_err(io)
    }
}

impl Writer {
    /// Serves requests until the store closes, then lets the syncer answer what it holds.
    fn run(mut self, rx: mpsc::Receiver<WriteReq>, healthy: Arc<AtomicBool>) {
        self.serve(rx, healthy);
        drop(self.durable.take());
        if let Some(s) = self.syncer.take() {
            let _ = s.join();
        }
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
        // What the saver still has is written before the store reports itself closed.
        if let Some(s) = self.saver.take() {
            s.finish(None);
        }
    }

    fn serve(&mut self, rx: mpsc::Receiver<WriteReq>, healthy: Arc<AtomicBool>) {
        // While unhealthy: when the next probe is due (requests keep coming or not).
        let mut next_probe = Instant::now();
        loop {
            let first = if healthy.load(Ordering::Acquire) {
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => {
                        // Closing: save the heads, so the next start-up reads no events for them.
                        self.checkpoint(true);
                        return;
                    }
                }
            } else {
                match rx.recv_timeout(next_probe.saturating_duration_since(Instant::now())) {
                    Ok(r) => r,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.probe(&healthy);
                        next_probe = Instant::now() + PROBE_EVERY;
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            if !healthy.load(Ordering::Acquire) && Instant::now() >= next_probe {
                self.probe(&healthy);
                next_probe = Instant::now() + PROBE_EVERY;
            }
            if !healthy.load(Ordering::Acquire) {
                let why = if self.diverged {
                    "the event log changed under a failed write; restart the server"
                } else {
                    "the event log cannot be written (an earlier write failed)"
                };
                for r in group {
                    let _ = r.reply.send(Err(StoreError::Io(why.into())));
                }
                continue;
            }
            let requests = group.len();
            if let Err(e) = self.commit_group(group, &healthy) {
                tracing::error!(
                    error = %e,
                    "event store write failed; refusing new work until a write succeeds again"
                );
                next_probe = Instant::now() + PROBE_EVERY;
            } else {
                if let Some(c) = &mut self.checkpointer {
                    c.committed(requests);
                    c.finish(&self.conn);
                }
                if self.heads.position - self.heads.checkpoint >= CHECKPOINT_EVERY {
                    self.checkpoint(false);
                }
            }
        }
    }

    /// Saves the stream heads (a cache for start-up: a failure is logged, nothing else): the
    /// position and hash in `store_heads` here, the streams by the saver thread
    /// ([`heads_file`]), from a clone that shares the map's shards until the writer changes
    /// them. `closing`: the last save, waited for.
    fn checkpoint(&mut self, closing: bool) {
        if self.heads.position == self.heads.checkpoint || self.diverged {
            return;
        }
        self.thaw();
        self.forgetting
            .apply(&mut self.heads.streams, None, self.heads.position);
        if let Err(e) = HeadsCheckpoint::save(&self.conn, &self.heads) {
            tracing::warn!(error = %e, "could not save the log's head");
            return;
        }
        self.heads.checkpoint = self.heads.position;
        let saved = heads_file::Saved {
            position: self.heads.position,
            hash: self.heads.hash,
            streams: self.heads.streams.clone(),
        };
        if closing {
            if let Some(s) = self.saver.take() {
                s.finish(Some(saved));
            }
        } else if !self.saver.as_ref().is_some_and(|s| s.offer(saved)) {
            tracing::debug!("stream heads not saved: the previous save is still running");
        }
    }

    /// Merges the heads committed while the saver held the map's shards into them (copying
    /// the shards it still holds, if it does).
    fn thaw(&mut self) {
        if !self.overlay.is_empty() {
            let overlay = std::mem::take(&mut self.overlay);
            self.heads.streams.extend(overlay);
        }
    }

    /// After a failed write: healthy again once the log is unchanged and a probe commits.
    fn probe(&mut self, healthy: &AtomicBool) {
        // After a failed fsync, what the file holds is unknown.
        self.diverged |= self.sync_failed.load(Ordering::Acquire);
        if self.diverged {
            return;
        }
        match self.try_probe() {
            Ok(true) => {
                healthy.store(true, Ordering::Release);
                tracing::warn!("event store writable again; accepting new work");
            }
            Ok(false) => {
                self.diverged = true;
                tracing::error!(
                    position = self.heads.position,
                    "the event log's last event is not the one this server wrote last (a \
                     failed commit reached the file?); restart the server to fold it in"
                );
            }
            Err(e) => tracing::debug!(error = %e, "event store still not writable"),
        }
    }

    /// `Ok(false)`: the log's last row is not our head. `Err`: still cannot write. A lock
    /// held by another process fails the probe at once (no busy wait): requests waiting behind
    /// a probe would only be refused later, or — for a reader's scan — decided late.
    fn try_probe(&mut self) -> Result<bool, StoreError> {
        self.conn.busy_timeout(Duration::ZERO).map_err(io)?;
        let probed = self.probe_write();
        self.conn.busy_timeout(BUSY_TIMEOUT).map_err(io)?;
        probed
    }

    fn probe_write(&mut self) -> Result<bool, StoreError> {
        let last: Option<(i64, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(io)?;
        let same = match last {
            None => self.heads.position == 0,
            Some((p, h)) => p as u64 == self.heads.position && h[..] == self.heads.hash[..],
        };
        if !same {
            return Ok(false);
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(io)?;
        // The append path itself: a row in `events`, removed in the same transaction, so the
        // log is unchanged but the statement appends use must work...
        let next = self.heads.position as i64 + 1;
        tx.execute(
            "INSERT INTO events (position, stream, revision, type, version, recorded_at, data, \
             prev_hash, hash) VALUES (?1, '$probe', 0, 'Probe', 0, '', '', x'', x'')",
            params![next],
        )
        .map_err(io)?;
        tx.execute("DELETE FROM events WHERE position = ?1", params![next])
            .map_err(io)?;
        // ... and room on the disk: PROBE_BYTES in a side table, emptied after the commit.
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS store_probe (id INTEGER PRIMARY KEY, pad BLOB NOT NULL)",
        )
        .map_err(io)?;
        tx.execute(
            "INSERT OR REPLACE INTO store_probe (id, pad) VALUES (1, zeroblob(?1))",
            params![PROBE_BYTES],
        )
        .map_err(io)?;
        tx.commit().map_err(io)?;
        self.conn
            .execute("DELETE FROM store_probe", [])
            .map_err(io)?;
        Ok(true)
    }

    /// Writes every acceptable request of `group` in one transaction and answers all of them.
    fn commit_group(
        &mut self,
        group: Vec<WriteReq>,
        healthy: &AtomicBool,
    ) -> Result<(), StoreError> {
        self.forgetting.apply(
            &mut self.heads.streams,
            Some(&mut self.overlay),
            self.heads.position,
        );
        let StagedGroup {
            position,
            hash,
            staged,
            accepted,
            refused,
        } = stage_group(
            &self.heads.streams,
            Some(&self.overlay).filter(|o| !o.is_empty()),
            self.heads.position,
            self.heads.hash,
            group,
        );
        for (req, e) in refused {
            let _ = req.reply.send(Err(e));
        }
        if accepted.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let commit = match self.write(&accepted) {
            Ok(took) => took,
            Err(e) => {
                metrics::histogram!("palmgate_store_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                // Unhealthy before anyone hears of the failure.
                healthy.store(false, Ordering::Release);
                for (req, _) in accepted {
                    let _ = req.reply.send(Err(e.clone()));
                }
                return Err(e);
            }
        };
        self.heads.position = position;
        self.heads.hash = hash;
        if self.overlay.is_empty() && !self.heads.streams.is_shared() {
            self.heads.streams.extend(staged);
        } else {
            // The saver still holds shards: no copying them; merged once it lets go.
            self.overlay.extend(staged);
            if !self.heads.streams.is_shared() {
                self.thaw();
            }
        }
        let committed = Committed {
            accepted,
            started,
            commit,
        };
        if let Some(Err(mpsc::SendError(c))) = self.durable.as_ref().map(|d| d.send(committed)) {
            // The syncer is gone (it panicked): nothing can be made durable any more.
            healthy.store(false, Ordering::Release);
            self.sync_failed.store(true, Ordering::Release);
            let e = StoreError::Io("the event log's syncer stopped; restart the server".into());
            for (req, _) in c.accepted {
                let _ = req.reply.send(Err(e.clone()));
            }
            return Err(e);
        }
        Ok(())
    }

    /// Writes the rows in one transaction; on success, how long the COMMIT (writing the WAL
    /// frames, and a WAL checkpoint with its syncs when SQLite runs one) took.
    fn write(&mut self, accepted: &[(WriteReq, Vec<RawEvent>)]) -> Result<Duration, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(io)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO events (position, stream, revision, type, version, recorded_at, \
                     data, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(io)?;
            for row in accepted.iter().flat_map(|(_, rows)| rows) {
                stmt.execute(params![
                    row.position as i64,
                    row.stream,
                    row.revision as i64,
                    row.kind,
                    row.version,
                    row.recorded_at,
                    row.data,
                    &row.prev_hash[..],
                    &row.hash[..],
                ])
                .map_err(io)?;
            }
        }
        let committing = Instant::now();
        tx.commit().map_err(io)?;
        Ok(committing.elapsed())
    }
}

/// A group commit this slow is logged (with its parts): requests wait for it.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// The groups one fsync made durable, when the oldest waited at least [`SLOW_COMMIT`] from its
/// staging to its answer: logged once per fsync, with its parts — the longest COMMIT (writing
/// the WAL, and a WAL checkpoint with its syncs when SQLite runs one) and the fsync — so a
/// latency tail can be matched to checkpoints or to the disk's fsync, or ruled out. (Every
/// group's duration is in `palmgate_store_commit_seconds`, every fsync's in
/// `palmgate_store_fsync_seconds`.)
struct Slow {
    waited: Duration,
    commit: Duration,
    sync: Duration,
    groups: usize,
    requests: usize,
    events: usize,
}

impl Slow {
    fn of(groups: &[Committed], sync: Duration) -> Option<Slow> {
        let waited = groups.first()?.started.elapsed();
        (waited >= SLOW_COMMIT).then(|| Slow {
            waited,
            commit: groups.iter().map(|g| g.commit).max().unwrap_or_default(),
            sync,
            groups: groups.len(),
            requests: groups.iter().map(|g| g.accepted.len()).sum(),
            events: groups
                .iter()
                .flat_map(|g| &g.accepted)
                .map(|(_, rows)| rows.len())
                .sum(),
        })
    }

    fn warn(&self) {
        tracing::warn!(
            ms = self.waited.as_millis() as u64,
            commit_ms = self.commit.as_millis() as u64,
            fsync_ms = self.sync.as_millis() as u64,
            groups = self.groups,
            requests = self.requests,
            events = self.events,
            "slow event-log commit (the writer in commit_ms, the disk's fsync in fsync_ms)"
        );
    }
}

impl EventStore for SqliteStore {
    fn append(
        &self,
        batch: Vec<StreamAppend>,
        recorded_at: DateTime<Utc>,
    ) -> BoxFuture<'static, Result<Vec<Recorded>, StoreError>> {
        let (req, rx) = WriteReq::new(batch, recorded_at);
        let sent = self
            .tx
            .lock()
            .expect("store lock")
            .as_ref()
            .is_some_and(|tx| tx.send(req).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read_raw(&self, after: u64, limit: usize) -> Result<Vec<RawEvent>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(100_000));
        self.read_raw_each(after, limit, &mut |r| out.push(r.to_owned_event()))?;
        Ok(out)
    }

    fn read_raw_each(
        &self,
        after: u64,
        limit: usize,
        each: &mut dyn FnMut(RawRef<'_>),
    ) -> Result<usize, StoreError> {
        let conn = self.readers.take()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT position, stream, revision, type, version, recorded_at, data, \
                 prev_hash, hash FROM events WHERE position > ?1 AND position <= ?3 \
                 ORDER BY position LIMIT ?2",
            )
            .map_err(io)?;
        let durable = self.on_disk.load(Ordering::Acquire);
        // Rows are lent in place, texts and hashes straight from SQLite's buffers: `audit
        // verify` and start-up read a million of them.
        let mut rows = stmt
            .query(params![after as i64, limit as i64, durable as i64])
            .map_err(io)?;
        let mut lent = 0;
        while let Some(r) = rows.next().map_err(io)? {
            let position = r.get::<_, i64>(0).map_err(io)? as u64;
            // A value of the wrong type names its row (`audit verify` reports it there and
            // reads on).
            let bad = |e: &dyn std::fmt::Display| StoreError::Corrupt {
                position,
                reason: e.to_string(),
            };
            let text = |i: usize| -> Result<&str, StoreError> {
                r.get_ref(i)
                    .map_err(|e| bad(&e))?
                    .as_str()
                    .map_err(|e| bad(&e))
            };
            let hash = |i: usize| -> Result<[u8; 32], StoreError> {
                let b = r.get_ref(i).map_err(|e| bad(&e))?;
                to_hash(position, b.as_blob().map_err(|e| bad(&e))?)
            };
            each(RawRef {
                position,
                stream: text(1)?,
                revision: r.get::<_, i64>(2).map_err(|e| bad(&e))? as u64,
                kind: text(3)?,
                version: r.get(4).map_err(|e| bad(&e))?,
                recorded_at: text(5)?,
                data: text(6)?,
                prev_hash: hash(7)?,
                hash: hash(8)?,
            });
            lent += 1;
        }
        Ok(lent)
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn close(&self) {
        SqliteStore::close(self)
    }

    fn snapshots(&self) -> Option<&SnapshotDir> {
        Some(&self.snapshots)
    }

    fn forget_streams(&self, streams: Vec<String>) {
        self.forgetting.forget(streams);
    }

    fn retain_streams(&self, keep: std::collections::HashMap<String, u64>, as_of: u64) {
        self.forgetting.retain(keep, as_of);
    }

    /// The row of `store_heads` (see [`EventStore::saved_head`] for what it proves), for a
    /// store opened by [`SqliteStore::open_read_only`]: read in the same transaction as the
    /// last position its reads stop at, so a saved position past that last position is never
    /// a writer that went on meanwhile. The writer saves it (as its [`HeadsCheckpoint`]) in a
    /// transaction of its own after the events it covers: every [`CHECKPOINT_EVERY`] events
    /// and when it closes cleanly (not after a failed write it has not recovered from, and
    /// not when the process is killed). A writing store answers `Ok(None)`: what it saved
    /// may not be durable yet, and its reads stop at what is.
    fn saved_head(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        self.saved.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Event, Expected, SessionId};

    fn expired(i: u8) -> Event {
        Event::SessionExpired {
            session_id: SessionId::from_random([i; 16]),
            at: Utc::now(),
        }
    }

    async fn put(store: &SqliteStore, stream: &str, expected: Expected) -> Result<(), StoreError> {
        let batch = vec![StreamAppend {
            stream: stream.into(),
            expected,
            events: vec![expected_event(stream)],
        }];
        store.append(batch, Utc::now()).await.map(|_| ())
    }

    fn expected_event(stream: &str) -> Event {
        expired(stream.len() as u8)
    }

    /// A failed fsync (here: a WAL that cannot be opened) answers the group with the error,
    /// marks the store unhealthy first, and refuses every later group too: what the file holds
    /// is unknown until a restart.
    #[tokio::test]
    async fn a_failed_fsync_acknowledges_nothing_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let failed = Arc::new(AtomicBool::new(false));
        let on_disk = Arc::new(AtomicU64::new(0));
        let syncer = Syncer {
            wal: dir.path().join("missing").join("events.db-wal"),
            file: None,
            healthy: healthy.clone(),
            failed: failed.clone(),
            on_disk: on_disk.clone(),
            acked: crate::store::acked::Writer::new(dir.path().join("events.db.acked")),
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || syncer.run(rx));
        let mut replies = Vec::new();
        for i in 0..2u8 {
            let batch = vec![StreamAppend {
                stream: format!("s{i}"),
                expected: Expected::Any,
                events: vec![expired(i)],
            }];
            let (req, reply) = WriteReq::new(batch, Utc::now());
            let row = RawEvent::seal([0; 32], 1, "s", 0, Utc::now(), &expired(i));
            tx.send(Committed {
                accepted: vec![(req, vec![row])],
                started: Instant::now(),
                commit: Duration::ZERO,
            })
            .unwrap();
            replies.push(reply);
        }
        drop(tx);
        thread.join().unwrap();
        for reply in replies {
            let err = reply.await.unwrap().unwrap_err();
            assert!(matches!(err, StoreError::Io(_)), "{err:?}");
        }
        assert!(!healthy.load(Ordering::Acquire));
        assert!(failed.load(Ordering::Acquire));
        assert_eq!(on_disk.load(Ordering::Acquire), 0, "nothing became durable");
    }

    /// Reads return only what is on disk: rows the writer has committed but no fsync has
    /// covered yet stay invisible (SPEC 8.1), and each good fsync makes its rows readable.
    #[tokio::test]
    async fn reads_stop_at_the_last_fsyncd_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("events.db")).unwrap();
        for i in 0..3 {
            put(&store, &format!("s{i}"), Expected::NoStream)
                .await
                .unwrap();
        }
        assert_eq!(store.on_disk.load(Ordering::Acquire), 3);
        assert_eq!(store.read_raw(0, 10).unwrap().len(), 3);
        // As if the last event were committed and its fsync not done yet.
        store.on_disk.store(2, Ordering::Release);
        let seen: Vec<u64> = store
            .read_raw(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.position)
            .collect();
        assert_eq!(seen, vec![1, 2]);
        // The next append's fsync covers everything before it.
        put(&store, "s3", Expected::NoStream).await.unwrap();
        assert_eq!(store.read_raw(0, 10).unwrap().len(), 4);
        drop(store);
        // Reopened, whatever the file holds is durable.
        let store = SqliteStore::open(dir.path().join("events.db")).unwrap();
        assert_eq!(store.read_raw(0, 10).unwrap().len(), 4);
    }

    /// The syncer's fsync is what acknowledges: appends made through the store come back
    /// only once the WAL is synced, and closing the store answers everything in flight.
    #[tokio::test]
    async fn appends_are_answered_through_the_syncer_and_close_drains_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let tasks: Vec<_> = (0..32u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { put(&store, &format!("stream-{i}"), Expected::Any).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        store.close();
        // Checkpointed into the database at the close (`close_alone_removes_the_wal_and_shm`).
        assert_eq!(side_files(&path), Vec::<PathBuf>::new());
        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(reopened.read_raw(0, 100).unwrap().len(), 32);
    }

    /// The writer does not checkpoint (`wal_autocheckpoint = 0`); the checkpointer thread
    /// copies the WAL into the database once enough requests were committed, and the log
    /// reads back whole afterwards.
    #[tokio::test]
    async fn the_checkpointer_copies_the_wal_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let autocheckpoint: i64 = Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        // A fresh connection has SQLite's default; the writer's own is set to 0 (asserted
        // below through the file sizes: the database only grows by the checkpointer).
        assert_eq!(autocheckpoint, 1000);
        let small = std::fs::metadata(&path).unwrap().len();
        let total = CHECKPOINT_REQUESTS + 100;
        let tasks: Vec<_> = (0..32)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in (t..total).step_by(32) {
                        put(&store, &format!("s-{i}"), Expected::NoStream)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() < small + 256 * 1024 {
            assert!(
                Instant::now() < deadline,
                "no checkpoint copied the WAL into the database ({} bytes, was {small})",
                std::fs::metadata(&path).unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.read_raw(0, usize::MAX).unwrap().len(), total);
        store.close();
        let reopened = SqliteStore::open(&path).unwrap();
        assert_eq!(reopened.read_raw(0, usize::MAX).unwrap().len(), total);
    }

    /// Under a steady write load the WAL starts again from its beginning after checkpoints
    /// (the writer copies the tail of each pass): it stays near the size of the requests
    /// between two passes instead of growing with the log.
    #[tokio::test]
    async fn the_wal_stays_bounded_under_a_steady_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let wal = dir.path().join("events.db-wal");
        let write = |from: usize, to: usize| {
            let tasks: Vec<_> = (0..32)
                .map(|t| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for i in (from + t..to).step_by(32) {
                            put(&store, &format!("s-{i}"), Expected::NoStream)
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect::<Vec<_>>();
            async move {
                for t in tasks {
                    t.await.unwrap();
                }
            }
        };
        write(0, CHECKPOINT_REQUESTS).await;
        let first = std::fs::metadata(&wal).unwrap().len();
        write(CHECKPOINT_REQUESTS, 6 * CHECKPOINT_REQUESTS).await;
        let after = std::fs::metadata(&wal).unwrap().len();
        assert!(
            after < 3 * first,
            "the WAL grew from {first} to {after} bytes over five times as many requests"
        );
        assert_eq!(
            store.read_raw(0, usize::MAX).unwrap().len(),
            6 * CHECKPOINT_REQUESTS
        );
    }

    /// Two reads run side by side: one that stays inside its row callback does not hold up
    /// another (`audit verify` decodes pages on two threads), and connections are reused.
    #[tokio::test]
    async fn reads_do_not_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
        for i in 0..3 {
            put(&store, &format!("s-{i}"), Expected::NoStream)
                .await
                .unwrap();
        }
        let (inside, wait_inside) = std::sync::mpsc::channel();
        let (release, wait_release) = std::sync::mpsc::channel::<()>();
        let slow = {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .read_raw_each(0, 1, &mut |_| {
                        inside.send(()).unwrap();
                        wait_release.recv().unwrap();
                    })
                    .unwrap()
            })
        };
        wait_inside.recv().unwrap();
        let (done, wait_done) = std::sync::mpsc::channel();
        let fast = {
            let store = store.clone();
            std::thread::spawn(move || done.send(store.read_raw(0, 10).unwrap().len()).unwrap())
        };
        let read = wait_done.recv_timeout(Duration::from_secs(10));
        release.send(()).unwrap();
        assert_eq!(
            read,
            Ok(3),
            "a second read waited for the first one's callback"
        );
        assert_eq!(slow.join().unwrap(), 1);
        fast.join().unwrap();
        let idle = store.readers.idle.lock().unwrap().len();
        assert!((1..=Readers::IDLE).contains(&idle), "{idle} idle readers");
    }

    /// The position of the heads saved beside the log, and the file's bytes.
    fn saved_heads(path: &Path) -> (u64, Vec<u8>) {
        let file = heads_file::path_beside(path);
        let saved = heads_file::read(&file).unwrap().expect("a heads file");
        (saved.position, std::fs::read(&file).unwrap())
    }

    /// The `store_heads` row: position and the size of its heads blob.
    fn saved_row(path: &Path) -> (i64, i64) {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT position, length(heads) FROM store_heads", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
    }

    /// After a restart: `a`'s last revision is `a`, `b` absent or at revision 0.
    async fn heads_are(store: &SqliteStore, a: u64, b: bool) {
        let err = put(store, "a", Expected::Revision(a + 1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { actual: Some(x), .. } if x == a),
            "a: {err}"
        );
        let err = put(store, "b", Expected::Revision(7)).await.unwrap_err();
        let want = b.then_some(0);
        assert!(
            matches!(err, StoreError::Conflict { actual, .. } if actual == want),
            "b: {err}"
        );
    }

    /// Heads come back right after a restart whatever the checkpoint: current, stale (events
    /// after it), not matching the log at all, past its end, damaged, or (a log written before
    /// the heads file) a blob in `store_heads`. The row keeps only the position and hash.
    #[tokio::test]
    async fn heads_survive_restarts_with_current_stale_or_foreign_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let file = heads_file::path_beside(&path);

        let store = SqliteStore::open(&path).unwrap();
        put(&store, "a", Expected::NoStream).await.unwrap();
        store.close();
        let (position, stale) = saved_heads(&path);
        assert_eq!(position, 1, "closing saves the heads");
        assert_eq!(saved_row(&path), (1, 0), "the row holds no streams");

        let store = SqliteStore::open(&path).unwrap();
        heads_are(&store, 0, false).await;
        put(&store, "a", Expected::Revision(0)).await.unwrap();
        put(&store, "b", Expected::NoStream).await.unwrap();
        store.close();
        assert_eq!(saved_heads(&path).0, 3);
        let current = std::fs::read(&file).unwrap();

        // Stale: as if the server had been killed before saving again.
        std::fs::write(&file, &stale).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        heads_are(&store, 1, true).await;
        store.close();

        // Foreign: heads whose hash is not the log's are ignored; so are heads past the
        // log's end (events removed behind the store's back) and a damaged file.
        let foreign = |position: u64| heads_file::Saved {
            position,
            hash: [0; 32],
            streams: StreamHeads::default(),
        };
        heads_file::write(&file, &foreign(3)).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        heads_are(&store, 1, true).await;
        store.close();
        let mut ahead = heads_file::read(&file).unwrap().unwrap();
        ahead.position = 999;
        heads_file::write(&file, &ahead).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        heads_are(&store, 1, true).await;
        store.close();
        std::fs::write(&file, &current[..current.len() / 2]).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        heads_are(&store, 1, true).await;
        store.close();

        // A log written before the file: its heads in the row's blob, stale at position 1.
        std::fs::remove_file(&file).unwrap();
        let mut at_one = StreamHeads::default();
        at_one.insert("a".into(), 0);
        let c = Connection::open(&path).unwrap();
        c.execute(
            "UPDATE store_heads SET position = 1, heads = ?1, \
             hash = (SELECT hash FROM events WHERE position = 1)",
            params![HeadsCheckpoint::encode(&at_one)],
        )
        .unwrap();
        drop(c);
        let store = SqliteStore::open(&path).unwrap();
        heads_are(&store, 1, true).await;
        store.close();
        assert_eq!(saved_row(&path).1, 0, "the blob is replaced by the file");
        assert!(heads_file::read(&file).unwrap().is_some());
    }

    /// A writer on a new log at `path` with no syncer or checkpointer, its heads at
    /// `position`/`hash` holding stream `a` at revision 4 (for the heads tests).
    fn bare_writer(
        path: &Path,
        position: u64,
        hash: [u8; 32],
        saver: Option<heads_file::Saver>,
    ) -> Writer {
        let conn = open_conn(path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        Writer {
            conn,
            heads: Heads {
                position,
                hash,
                streams: [("a".to_string(), 4)].into_iter().collect(),
                checkpoint: 0,
            },
            diverged: false,
            forgetting: Arc::new(Forgetting::default()),
            durable: None,
            syncer: None,
            sync_failed: Arc::new(AtomicBool::new(false)),
            checkpointer: None,
            saver,
            overlay: Default::default(),
        }
    }

    /// The writer goes on while the saver thread writes: heads saved mid-run (every
    /// `CHECKPOINT_EVERY` events) are written beside the log by the saver, and the row has
    /// the same position.
    #[test]
    fn checkpoints_mid_run_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let file = heads_file::path_beside(&path);
        let saver = heads_file::Saver::start(file.clone()).unwrap();
        let mut writer = bare_writer(&path, 5, [3; 32], Some(saver));
        writer.checkpoint(false);
        assert_eq!(writer.heads.checkpoint, 5);
        // The writer's next change does not reach what the saver was handed.
        writer.heads.streams.insert("a".into(), 5);
        writer.saver.take().unwrap().finish(None);
        let saved = heads_file::read(&file).unwrap().unwrap();
        assert_eq!(
            (saved.position, saved.hash, saved.streams.get("a")),
            (5, [3; 32], Some(&4))
        );
        assert_eq!(saved_row(&path), (5, 0));
    }

    /// While the saver shares the heads' shards, the writer keeps what it commits aside
    /// (checked before the map, so revisions stay exact) instead of copying shards, and merges
    /// it once the saver lets go.
    #[test]
    fn heads_committed_during_a_save_are_kept_aside_then_merged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let mut writer = bare_writer(&path, 0, [0; 32], None);
        let healthy = AtomicBool::new(true);
        let commit = |w: &mut Writer, stream: &str, expected: Expected| {
            let batch = vec![StreamAppend {
                stream: stream.into(),
                expected,
                events: vec![expected_event(stream)],
            }];
            let (req, mut rx) = WriteReq::new(batch, Utc::now());
            w.commit_group(vec![req], &healthy).unwrap();
            // Refused requests are answered at once; accepted ones by the syncer (none here).
            match rx.try_recv() {
                Ok(Err(e)) => Err(e),
                _ => Ok(()),
            }
        };
        let held = writer.heads.streams.clone(); // as the saver does
        commit(&mut writer, "a", Expected::Revision(4)).unwrap();
        commit(&mut writer, "b", Expected::NoStream).unwrap();
        commit(&mut writer, "a", Expected::Revision(5)).unwrap();
        let err = commit(&mut writer, "a", Expected::Revision(5)).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    actual: Some(6),
                    ..
                }
            ),
            "{err}"
        );
        let err = commit(&mut writer, "b", Expected::NoStream).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    actual: Some(0),
                    ..
                }
            ),
            "{err}"
        );
        assert!(writer.heads.streams.is_shared(), "a shard was copied");
        assert_eq!(
            (writer.overlay.get("a"), writer.overlay.get("b")),
            (Some(&6), Some(&0))
        );
        assert_eq!((held.get("a"), held.get("b")), (Some(&4), None));
        // A stream the app lets go of meanwhile goes from the overlay too: merged later, it
        // must not come back.
        commit(&mut writer, "d", Expected::NoStream).unwrap();
        writer.forgetting.forget(vec!["b".into(), "d".into()]);
        commit(&mut writer, "e", Expected::NoStream).unwrap();
        assert_eq!(
            (writer.overlay.get("b"), writer.overlay.get("d")),
            (None, None)
        );
        // The saver lets go: the next commit merges.
        drop(held);
        commit(&mut writer, "c", Expected::NoStream).unwrap();
        assert!(writer.overlay.is_empty());
        let h = &writer.heads.streams;
        assert_eq!(
            (
                h.get("a"),
                h.get("b"),
                h.get("c"),
                h.get("d"),
                h.get("e"),
                h.len()
            ),
            (Some(&6), None, Some(&0), None, Some(&0), 3)
        );
    }

    #[test]
    fn checkpoint_encoding_round_trips_and_rejects_truncation() {
        let mut streams = StreamHeads::default();
        streams.insert("session-1".to_string(), 3);
        streams.insert("ключ".to_string(), u64::MAX);
        streams.insert(String::new(), 0);
        let bytes = HeadsCheckpoint::encode(&streams);
        assert_eq!(HeadsCheckpoint::decode(&bytes), Some(streams));
        for cut in 0..bytes.len() {
            assert_eq!(HeadsCheckpoint::decode(&bytes[..cut]), None, "cut at {cut}");
        }
    }

    /// The schema has no index on `(stream, revision)` (see [`HeadsCheckpoint`]): revisions
    /// are checked by the writer, and a group of appends writes its events side by side.
    #[test]
    fn the_log_has_no_per_stream_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        SqliteStore::open(&path).unwrap().close();
        let n: i64 = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
    }

    /// One writing process per log: a second `open` of a log already open is refused with a
    /// message naming the path and the lock file (a second writer would wedge the first);
    /// after the first is closed, or dropped, the log opens again. `palmgate audit`'s
    /// read-only open takes no lock and works beside the writer.
    #[tokio::test]
    async fn a_log_already_open_is_not_opened_for_writing_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let first = SqliteStore::open(&path).unwrap();
        put(&first, "a", Expected::NoStream).await.unwrap();
        let err = match SqliteStore::open(&path) {
            Ok(_) => panic!("a second writer opened a log already open"),
            Err(e) => e.to_string(),
        };
        let lock = lock_path(&path);
        assert!(
            err.contains(&format!(
                "store.path {} is in use by another palmgate process",
                path.display()
            )) && err.contains(&lock.display().to_string()),
            "{err}"
        );
        let audit = SqliteStore::open_read_only(&path)
            .unwrap()
            .expect("an event log");
        assert_eq!(audit.read_raw(0, 10).unwrap().len(), 1);
        put(&first, "b", Expected::NoStream).await.unwrap();
        first.close();
        let second = SqliteStore::open(&path).unwrap();
        put(&second, "c", Expected::NoStream).await.unwrap();
        assert_eq!(second.read_raw(0, 10).unwrap().len(), 3);
        drop(second);
        drop(SqliteStore::open(&path).unwrap());
    }

    /// The log is created private (0600), whatever the umask, and SQLite's `-wal` and `-shm`
    /// files follow it: they hold names, metadata and door movements.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_log_and_its_wal_are_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteStore::open(&path).unwrap();
        put(&store, "a", Expected::NoStream).await.unwrap();
        for name in [
            "events.db",
            "events.db-wal",
            "events.db-shm",
            "events.db.lock",
        ] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name} has mode {:o}", mode & 0o777);
        }
    }

    /// A log left by a process killed between a commit and its fsync has a `-wal` whose frames
    /// may be in the page cache only: `open` fsyncs it, the database file and their directory
    /// before the store shows any event (`on_disk` counts them durable). What this proves: the
    /// three fsyncs are made by `open`, on the files the log uses, before it returns (recorded
    /// by `sync_at_open`, tests only). It cannot prove the kernel then has the frames on the
    /// disk: that would take a power cut.
    #[tokio::test]
    async fn open_fsyncs_the_wal_the_file_and_the_directory_it_finds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteStore::open(&path).unwrap();
        put(&store, "a", Expected::NoStream).await.unwrap();
        put(&store, "bb", Expected::NoStream).await.unwrap();
        // Another connection keeps the WAL from being removed when the store closes, as a
        // kill -9 would.
        let other = Connection::open(&path).unwrap();
        let n: i64 = other
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        store.close();
        drop(store);
        let wal = wal_path(&path);
        assert!(std::fs::metadata(&wal).unwrap().len() > 0, "a WAL is left");

        SYNCED_AT_OPEN.with(|s| s.borrow_mut().clear());
        let store = SqliteStore::open(&path).unwrap();
        let synced = SYNCED_AT_OPEN.with(|s| s.borrow().clone());
        assert_eq!(synced, [wal, path.clone(), dir.path().to_path_buf()]);
        assert_eq!(store.read_raw(0, 10).unwrap().len(), 2);
        drop(other);
    }

    /// A corrupt log stops start-up with an error naming the file and its config key, not
    /// SQLite's bare "file is not a database".
    /// A log path under a plain file (a directory that cannot be made) names `store.path`.
    #[test]
    fn a_log_directory_that_cannot_be_made_is_named_with_its_config_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("afile"), "").unwrap();
        let path = dir.path().join("afile").join("sub").join("events.db");
        let Err(err) = SqliteStore::open(&path) else {
            panic!("opened under a plain file");
        };
        let err = err.to_string();
        assert!(
            err.contains(&format!("store.path {}: cannot create", path.display())),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_log_is_named_with_its_config_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        std::fs::write(&path, vec![0x5Au8; 8192]).unwrap();
        let err = SqliteStore::open(&path).err().expect("refused").to_string();
        assert_eq!(
            err,
            format!(
                "storage failure: store.path {}: file is not a database",
                path.display()
            )
        );
    }

    /// `<path>-wal` and `<path>-shm`, whichever exist.
    fn side_files(path: &Path) -> Vec<PathBuf> {
        ["-wal", "-shm"]
            .iter()
            .map(|end| {
                let mut p = path.as_os_str().to_owned();
                p.push(end);
                PathBuf::from(p)
            })
            .filter(|p| p.exists())
            .collect()
    }

    /// A log of three events, closed cleanly (no `-wal` or `-shm` left).
    async fn closed_log(path: &Path) {
        let store = SqliteStore::open(path).unwrap();
        for s in ["a", "bb", "ccc"] {
            put(&store, s, Expected::NoStream).await.unwrap();
        }
        store.close();
        drop(store);
        assert_eq!(
            side_files(path),
            Vec::<PathBuf>::new(),
            "a clean close leaves none"
        );
    }

    /// `close` alone (the store still referenced, as by a task that outlives the server: the
    /// SIGTERM path) leaves no `-wal` or `-shm`: the read connections close with it, and a read
    /// after the close opens and closes its own. Before, the idle readers stayed open until the
    /// last reference went, so a stopped server left both files beside the log.
    #[tokio::test]
    async fn close_alone_removes_the_wal_and_shm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        for s in ["a", "bb", "ccc"] {
            put(&store, s, Expected::NoStream).await.unwrap();
        }
        // Two readers at once, so the pool holds more than the first connection.
        let (a, b) = (store.readers.take().unwrap(), store.readers.take().unwrap());
        drop((a, b));
        assert_eq!(store.read_raw(0, 10).unwrap().len(), 3);
        assert!(!side_files(&path).is_empty(), "a live log has its WAL");
        let kept = store.clone();
        store.close();
        assert_eq!(
            side_files(&path),
            Vec::<PathBuf>::new(),
            "close leaves none"
        );
        assert_eq!(kept.read_raw(0, 10).unwrap().len(), 3, "reads still work");
        assert_eq!(
            side_files(&path),
            Vec::<PathBuf>::new(),
            "nor does a later read"
        );
    }

    /// A read-only open reads without writing: a log with no side files gets none (it was
    /// read as an immutable file: a shared read leaves an empty `-wal` and a `-shm`), and a
    /// copy in rollback-journal mode (`VACUUM INTO`) reads too (the WAL pragma of a writing
    /// connection failed on it with "attempt to write a readonly database").
    #[tokio::test]
    async fn read_only_opens_create_no_side_files_and_read_rollback_journal_copies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        closed_log(&path).await;
        let copy = dir.path().join("copy.db");
        Connection::open(&path)
            .unwrap()
            .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
            .unwrap();
        assert!(
            !in_wal_mode(&copy),
            "VACUUM INTO writes a rollback-journal file"
        );
        // Opening `path` with a writing connection made side files: closed, they are gone.
        assert_eq!(side_files(&path), Vec::<PathBuf>::new());
        for log in [&copy, &path] {
            let store = SqliteStore::open_read_only(log)
                .unwrap()
                .expect("an event log");
            let events = store.read_raw(0, 10).unwrap();
            assert_eq!(events.len(), 3, "{}", log.display());
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e.position, i as u64 + 1);
                assert_eq!(e.computed_hash(), e.hash, "{}", log.display());
            }
            // More reads than one connection: the pool opens others the same way.
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| assert_eq!(store.read_raw(1, 10).unwrap().len(), 2));
                }
            });
            drop(store);
            assert_eq!(side_files(log), Vec::<PathBuf>::new(), "{}", log.display());
        }
    }

    /// A WAL log in a directory the reader cannot write (its `-shm` cannot be created) is
    /// read as an immutable file. As root permissions do not bite: the test says so and stops.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_log_in_a_directory_the_reader_cannot_write_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        closed_log(&path).await;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let restore =
            || std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        if std::fs::write(dir.path().join("probe"), b"").is_ok() {
            restore().unwrap();
            println!(
                "SKIPPED: this process can write a directory of mode 0555 (root?): a read-only \
                 directory cannot be tested here"
            );
            return;
        }
        let read = SqliteStore::open_read_only(&path).map(|s| {
            let s = s.expect("an event log");
            (s.read_raw(0, 10).map(|e| e.len()), s.saved_head())
        });
        let left = side_files(&path);
        restore().unwrap();
        let (events, saved) = read.unwrap();
        assert_eq!(events.unwrap(), 3);
        assert_eq!(saved.unwrap().map(|(p, _)| p), Some(3));
        assert_eq!(left, Vec::<PathBuf>::new());
    }

    /// A `-wal` with frames that cannot be read shared (no `-shm`, here because the `-wal` is
    /// not SQLite's) is not ignored by an immutable read: the open fails and says why.
    #[cfg(unix)]
    #[test]
    fn a_wal_with_frames_is_not_skipped_by_an_immutable_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            c.execute_batch(SCHEMA).unwrap();
        }
        // A symbolic link in the way of the `-shm`: SQLite, which opens it with O_NOFOLLOW,
        // cannot open it (as it cannot create it in a directory it may not write).
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), PathBuf::from(shm)).unwrap();
        std::fs::write(wal_path(&path), vec![7u8; 4096]).unwrap();
        let err = SqliteStore::open_read_only(&path)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.starts_with(&format!(
                "storage failure: cannot read {} read-only: ",
                path.display()
            )) && err.contains("holds 4096 bytes of events"),
            "{err}"
        );
    }

    /// The head the writer saved (`store_heads`) as `saved_head` gives it: none before the
    /// writer saved one (and for a writing store), the last event's after a clean close, still
    /// there when the tail is cut off behind the store's back (past the last position the
    /// reads reach, in the same snapshot), and malformed rows as errors.
    #[tokio::test]
    async fn the_saved_head_outlives_a_cut_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store = SqliteStore::open(&path).unwrap();
        for s in ["a", "bb", "ccc"] {
            put(&store, s, Expected::NoStream).await.unwrap();
        }
        assert_eq!(
            store.saved_head().unwrap(),
            None,
            "a writing store vouches for none"
        );
        let beside = SqliteStore::open_read_only(&path).unwrap().unwrap();
        assert_eq!(beside.saved_head().unwrap(), None, "nothing saved yet");
        assert_eq!(beside.read_raw(0, 10).unwrap().len(), 3);
        store.close();
        drop(store);
        drop(beside);

        let store = SqliteStore::open_read_only(&path).unwrap().unwrap();
        let last = store.read_raw(0, 10).unwrap().pop().unwrap();
        assert_eq!(store.saved_head().unwrap(), Some((3, last.hash)));
        drop(store);

        let c = Connection::open(&path).unwrap();
        c.execute("DELETE FROM events WHERE position >= 2", [])
            .unwrap();
        let store = SqliteStore::open_read_only(&path).unwrap().unwrap();
        assert_eq!(store.read_raw(0, 10).unwrap().len(), 1);
        assert_eq!(store.saved_head().unwrap(), Some((3, last.hash)));
        drop(store);

        for (set, what) in [
            ("hash = x'0102'", "has a hash of 2 bytes, not 32"),
            ("position = -4", "has the position Integer(-4)"),
            ("position = 'x'", "has the position Text(\"x\")"),
        ] {
            c.execute(&format!("UPDATE store_heads SET {set}"), [])
                .unwrap();
            let store = SqliteStore::open_read_only(&path).unwrap().unwrap();
            let err = store.saved_head().unwrap_err().to_string();
            assert!(
                err.ends_with(&format!(
                    "the head the log saved (table store_heads) {what}"
                )),
                "{err}"
            );
            c.execute(
                "UPDATE store_heads SET position = 3, hash = ?1",
                [&last.hash[..]],
            )
            .unwrap();
        }
        c.execute("UPDATE store_heads SET position = 0", [])
            .unwrap();
        let store = SqliteStore::open_read_only(&path).unwrap().unwrap();
        assert_eq!(store.saved_head().unwrap(), None, "position 0 says nothing");
        c.execute("DROP TABLE store_heads", []).unwrap();
        let store = SqliteStore::open_read_only(&path).unwrap().unwrap();
        assert_eq!(store.saved_head().unwrap(), None, "a log without the table");
        assert_eq!(store.read_raw(0, 10).unwrap().len(), 1);
    }
}
