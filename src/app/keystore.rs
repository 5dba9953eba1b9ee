//! The key store: wrapped per-user data keys, in their own SQLite file, outside the log.
//!
//! Invariants: a key is written (and synced) before the event that references it is appended;
//! deletion overwrites the row's bytes (`secure_delete`) and uses a rollback journal, not WAL,
//! so a destroyed key does not linger in a write-ahead log.
//!
//! The file is bound to its log and its master key (`meta` table): `log_id`, the hash of the
//! log's first event, and `key_check`, a MAC of a fixed label under the master key. Start-up
//! refuses a log or a master key other than the ones the keys were written with: the start-up
//! sweep would otherwise destroy every key the (wrong) log does not reference, and a wrong
//! master key opens none of the templates.
//!
//! A new key store (no data keys, no `meta`) binds nothing until start-up has vetted it
//! against the log's state ([`KeyStore::adopt`]): beside a log with enrolled templates it is
//! refused (it would open none of them, and would record whatever master key came with it),
//! and beside a log with webhook secrets the master key must open them.

use crate::core::KeyId;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use subtle::ConstantTimeEq;

/// `meta` names.
const LOG_ID: &str = "log_id";
const KEY_CHECK: &str = "key_check";

#[derive(Debug, thiserror::Error)]
#[error("key store: {0}")]
pub struct KeyStoreError(String);

fn err(e: impl std::fmt::Display) -> KeyStoreError {
    KeyStoreError(e.to_string())
}

pub struct KeyStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The exclusive lock on `<path>.lock`, held until [`KeyStore::close`]: one palmgate
    /// process per key store. A second one (another log configured with the same
    /// `secrets.key_store`) would destroy, at its start-up, every key its own log does not
    /// reference: the first one's users' keys.
    lock: Mutex<Option<std::fs::File>>,
    /// Whether this open created the file (it did not exist).
    created: bool,
    /// A new key store not vetted yet (see [`KeyStore::adopt`]): its `meta` writes wait in
    /// `pending`, so a refused start leaves no binding to a log or a master key behind.
    unvetted: AtomicBool,
    pending: Mutex<Vec<(&'static str, Vec<u8>)>>,
}

impl KeyStore {
    pub fn open(path: &Path) -> Result<KeyStore, KeyStoreError> {
        // Every error names the file and its key: "file is not a database" alone does not say
        // which file, nor where it is configured.
        let at = |e: &dyn std::fmt::Display| {
            KeyStoreError(format!("secrets.key_store {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| at(&e))?;
        }
        let lock = crate::store::sqlite::lock_beside(path, "secrets.key_store").map_err(err)?;
        let created = !path.exists();
        let conn = Connection::open(path).map_err(|e| at(&e))?;
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| at(&e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| at(&e))?;
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(|e| at(&e))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS data_keys (id TEXT PRIMARY KEY, wrapped BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS signouts (scope TEXT NOT NULL, login TEXT NOT NULL,
                 until INTEGER NOT NULL, PRIMARY KEY (scope, login));",
        )
        .map_err(|e| at(&e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let new: bool = conn
            .query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM data_keys) AND NOT EXISTS (SELECT 1 FROM meta)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| at(&e))?;
        Ok(KeyStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            lock: Mutex::new(Some(lock)),
            created,
            unvetted: AtomicBool::new(new),
            pending: Mutex::new(Vec::new()),
        })
    }

    /// Lets go of the key store's lock (the server has stopped: another open may use it).
    pub fn close(&self) {
        self.lock.lock().expect("key store lock").take();
    }

    pub fn put(&self, id: KeyId, wrapped: &[u8]) -> Result<(), KeyStoreError> {
        self.conn
            .lock()
            .expect("key store lock")
            .execute(
                "INSERT OR REPLACE INTO data_keys (id, wrapped) VALUES (?1, ?2)",
                params![id.to_string(), wrapped],
            )
            .map(|_| ())
            .map_err(err)
    }

    pub fn get(&self, id: KeyId) -> Result<Option<Vec<u8>>, KeyStoreError> {
        self.conn
            .lock()
            .expect("key store lock")
            .prepare_cached("SELECT wrapped FROM data_keys WHERE id = ?1")
            .and_then(|mut st| st.query_row(params![id.to_string()], |r| r.get(0)))
            .optional()
            .map_err(err)
    }

    pub fn delete(&self, id: KeyId) -> Result<(), KeyStoreError> {
        self.conn
            .lock()
            .expect("key store lock")
            .execute(
                "DELETE FROM data_keys WHERE id = ?1",
                params![id.to_string()],
            )
            .map(|_| ())
            .map_err(err)
    }

    pub fn ids(&self) -> Result<Vec<KeyId>, KeyStoreError> {
        let conn = self.conn.lock().expect("key store lock");
        let mut stmt = conn.prepare("SELECT id FROM data_keys").map_err(err)?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(err)?
            .filter_map(|r| r.ok())
            .filter_map(|s| KeyId::parse(&s))
            .collect();
        Ok(ids)
    }

    /// Records a dashboard login signed out: `login` of the holder `scope`, refused until
    /// `until` (Unix seconds; the cookie expires then anyway). Kept here, beside the keys, so a
    /// restart does not bring a signed-out cookie back (`http::dash::session`).
    /// The ones past at `now` go at the same time, and a holder's floor (`floor`: a login id
    /// of `*floor`, see the session module) replaces that holder's ids, so the table holds no
    /// more than the sets in memory.
    pub fn record_signout(
        &self,
        scope: &str,
        login: &str,
        until: i64,
        now: i64,
        floor: bool,
    ) -> Result<(), KeyStoreError> {
        let mut conn = self.conn.lock().expect("key store lock");
        let tx = conn.transaction().map_err(|e| self.at(e))?;
        tx.execute("DELETE FROM signouts WHERE until <= ?1", params![now])
            .map_err(|e| self.at(e))?;
        if floor {
            tx.execute("DELETE FROM signouts WHERE scope = ?1", params![scope])
                .map_err(|e| self.at(e))?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO signouts (scope, login, until) VALUES (?1, ?2, ?3)",
            params![scope, login, until],
        )
        .map_err(|e| self.at(e))?;
        tx.commit().map_err(|e| self.at(e))
    }

    /// The sign-outs still in force at `now` (Unix seconds), as `(scope, login, until)`; the
    /// ones past are deleted.
    pub fn signouts(&self, now: i64) -> Result<Vec<(String, String, i64)>, KeyStoreError> {
        let conn = self.conn.lock().expect("key store lock");
        conn.execute("DELETE FROM signouts WHERE until <= ?1", params![now])
            .map_err(|e| self.at(e))?;
        let mut stmt = conn
            .prepare("SELECT scope, login, until FROM signouts")
            .map_err(|e| self.at(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.at(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.at(e))?;
        Ok(rows)
    }

    /// Whether the file holds at least one data key.
    pub fn has_keys(&self) -> Result<bool, KeyStoreError> {
        self.conn
            .lock()
            .expect("key store lock")
            .query_row("SELECT EXISTS (SELECT 1 FROM data_keys)", [], |r| r.get(0))
            .map_err(|e| self.at(e))
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, KeyStoreError> {
        let pending = self.pending.lock().expect("key store lock");
        if let Some((_, v)) = pending.iter().rev().find(|(n, _)| *n == name) {
            return Ok(Some(v.clone()));
        }
        drop(pending);
        self.conn
            .lock()
            .expect("key store lock")
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.at(e))
    }

    fn set_meta(&self, name: &'static str, value: &[u8]) -> Result<(), KeyStoreError> {
        if self.unvetted.load(Ordering::SeqCst) {
            let mut pending = self.pending.lock().expect("key store lock");
            pending.retain(|(n, _)| *n != name);
            pending.push((name, value.to_vec()));
            return Ok(());
        }
        self.conn
            .lock()
            .expect("key store lock")
            .execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)",
                params![name, value],
            )
            .map(|_| ())
            .map_err(|e| self.at(e))
    }

    fn at(&self, e: impl std::fmt::Display) -> KeyStoreError {
        KeyStoreError(format!("secrets.key_store {}: {e}", self.path.display()))
    }

    /// Binds the file to its log, or refuses a log it does not belong to. `first` is the hash
    /// of the log's first event (`None`: the log is empty); `log` names it (`store.path <path>`
    /// or `store.url <url>`, see [`log_name`]). The first non-empty log met is recorded;
    /// afterwards another first event, or an empty log, is refused, as is an empty log beside
    /// data keys (a typo in `store.path` creates a new, empty log): the start-up sweep would
    /// destroy every key that log does not reference, i.e. every enrolled user's.
    pub fn bind_to_log(&self, first: Option<[u8; 32]>, log: &str) -> Result<(), KeyStoreError> {
        let bound = self.meta(LOG_ID)?;
        let ks = self.path.display();
        let fix = format!(
            "point {log} and secrets.key_store at the same site's files (a key store restored \
             from a backup goes with the log of that backup); palmgate refuses to start rather \
             than destroy the key store's data keys, which the log does not reference"
        );
        match (bound, first) {
            (Some(bound), Some(first)) if bound[..] != first[..] => Err(KeyStoreError(format!(
                "secrets.key_store {ks} belongs to another log than {log} (the log's first \
                 event is not the one the key store was written beside): {fix}"
            ))),
            (Some(_), None) => Err(KeyStoreError(format!(
                "{log} is an empty log, but secrets.key_store {ks} belongs to a log with \
                 events: {fix}"
            ))),
            (None, None) if self.has_keys()? => Err(KeyStoreError(format!(
                "{log} is an empty log, but secrets.key_store {ks} holds data keys: {fix}"
            ))),
            (None, Some(first)) => self.set_meta(LOG_ID, &first),
            _ => Ok(()),
        }
    }

    /// Why the master key must already exist (`Some`: this log or this key store was written
    /// with one), or `None` for a new site, the only case where a new one may be generated.
    pub fn master_key_needed(
        &self,
        log_has_events: bool,
        log: &str,
    ) -> Result<Option<String>, KeyStoreError> {
        let ks = self.path.display();
        Ok(if log_has_events {
            Some(format!(
                "the log {log} has events (its templates and webhook secrets were sealed with it)"
            ))
        } else if self.has_keys()? || self.meta(KEY_CHECK)?.is_some() {
            Some(format!("secrets.key_store {ks} was written with it"))
        } else {
            None
        })
    }

    /// Checks that `check` (see [`crate::app::secrets::Keys::key_check`]) is the one of the
    /// master key this file was written with, recording it the first time. `source` says where
    /// the master key came from (`secrets.key_file <path>` or the environment variable).
    pub fn check_master_key(&self, check: [u8; 32], source: &str) -> Result<(), KeyStoreError> {
        match self.meta(KEY_CHECK)? {
            None => self.set_meta(KEY_CHECK, &check),
            Some(stored) if bool::from(stored.ct_eq(&check[..])) => Ok(()),
            Some(_) => Err(KeyStoreError(format!(
                "the master key from {source} is not the one secrets.key_store {} was written \
                 with: none of its templates or the log's webhook secrets would open. Restore \
                 the site's master key (from backup) there; palmgate refuses to start with \
                 another",
                self.path.display()
            ))),
        }
    }
}

impl KeyStore {
    /// Vets a new key store (no data keys, no `meta` when opened) against the log's state,
    /// then writes the binding to the log and the master key that start-up left pending; a
    /// key store that was not new is left as it is. `log` names the log (see [`log_name`]),
    /// `source` the master key's (see [`crate::app::secrets::master_key_source`]).
    ///
    /// Refused: enrolled users with templates (they are sealed with data keys that only the
    /// log's own key store holds: none would match, and none could enroll again), and webhook
    /// secrets the master key opens none of (another master key; recorded in the new key
    /// store, it would then refuse the right one). A log with events but neither (partners,
    /// doors, users enrolled without a template) starts with the new key store: it loses
    /// nothing. A refused key store is removed if this open created it (otherwise it is left
    /// as it was: no `meta`).
    pub fn adopt(
        &self,
        state: &crate::core::State,
        keys: &crate::app::secrets::Keys,
        log: &str,
        source: &str,
    ) -> Result<(), KeyStoreError> {
        if !self.unvetted.load(Ordering::SeqCst) {
            return Ok(());
        }
        let ks = self.path.display();
        let new = format!(
            "secrets.key_store {ks} is a new key store (no data keys, bound to no log and no \
             master key)"
        );
        let fix = format!(
            "restore the keys.db that belongs to this log (from the same backup as the log and \
             its master key) at secrets.key_store {ks}, or, to start a new site, move the log \
             ({log}) away; palmgate refuses to start with a new key store beside it"
        );
        let templates = state.users().filter(|u| u.template.is_some()).count();
        let sealed: Vec<&str> = state
            .partners()
            .filter_map(|p| state.webhook(p.id))
            .flat_map(|w| {
                std::iter::once(w.secret.as_str())
                    .chain(w.previous.iter().map(|(s, _)| s.as_str()))
                    .chain(w.older.iter().map(|(s, _)| s.as_str()))
            })
            .collect();
        let refused = if templates > 0 {
            Some(format!(
                "{new}, but the log {log} has {templates} enrolled user(s) whose templates are \
                 sealed with data keys kept only in that log's own key store: with a new one none \
                 of them would match, and none could enroll again. To fix: {fix}"
            ))
        } else if !sealed.is_empty() && sealed.iter().all(|s| keys.open_secret(s).is_none()) {
            Some(format!(
                "{new}, and the master key from {source} opens none of the webhook secrets in \
                 the log {log}: it is not the master key this log was written with. To fix: \
                 restore the site's master key (from backup) there, and {fix}"
            ))
        } else {
            None
        };
        if let Some(why) = refused {
            self.pending.lock().expect("key store lock").clear();
            if self.created {
                // Closes the file (the connection is replaced) before removing it.
                let mut conn = self.conn.lock().expect("key store lock");
                if let Ok(memory) = Connection::open_in_memory() {
                    *conn = memory;
                    let _ = std::fs::remove_file(&self.path);
                }
            }
            return Err(KeyStoreError(why));
        }
        self.unvetted.store(false, Ordering::SeqCst);
        let pending = std::mem::take(&mut *self.pending.lock().expect("key store lock"));
        for (name, value) in pending {
            self.set_meta(name, &value)?;
        }
        Ok(())
    }
}

/// How start-up errors name the log: `store.url <url>` (without any user or password) or
/// `store.path <path>`.
pub fn log_name(store: &crate::config::StoreConfig) -> String {
    match &store.url {
        Some(url) => {
            let shown = match (url.find("://"), url.rfind('@')) {
                (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
                _ => url.clone(),
            };
            format!("store.url {shown}")
        }
        None => format!("store.path {}", store.path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One process per key store: a second open (another log configured with the same
    /// `secrets.key_store`, whose start-up sweep would destroy the first one's keys) is refused
    /// with a message naming the key and the files; after `close` it opens again.
    #[test]
    fn a_key_store_already_open_is_not_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let first = KeyStore::open(&path).unwrap();
        let id = KeyId::from_random([7; 16]);
        first.put(id, b"wrapped").unwrap();
        let err = match KeyStore::open(&path) {
            Ok(_) => panic!("a second process opened a key store already open"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!(
                "secrets.key_store {} is in use by another palmgate process",
                path.display()
            )) && err.contains("keys.db.lock"),
            "{err}"
        );
        first.close();
        let second = KeyStore::open(&path).unwrap();
        assert_eq!(second.get(id).unwrap().as_deref(), Some(&b"wrapped"[..]));
    }
    /// The key store is bound to the first log it meets with events: another log, or an empty
    /// one, is refused naming both files and their keys; an older key store (keys, no log_id)
    /// gets the log_id of the log beside it.
    #[test]
    fn a_key_store_refuses_a_log_it_does_not_belong_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let ks = KeyStore::open(&path).unwrap();
        let log = "store.path /site/events.db";
        // A new site: empty log, no keys.
        ks.bind_to_log(None, log).unwrap();
        adopt_empty(&ks, log);
        ks.put(KeyId::from_random([1; 16]), b"wrapped").unwrap();
        // Keys but no log_id (an older key store) beside an empty log: refused.
        let e = ks.bind_to_log(None, log).unwrap_err().to_string();
        assert!(
            e.contains(log)
                && e.contains(&format!("secrets.key_store {}", path.display()))
                && e.contains("empty log")
                && e.contains("same site's files"),
            "{e}"
        );
        // ... beside a log with events: bound to it.
        ks.bind_to_log(Some([1; 32]), log).unwrap();
        ks.bind_to_log(Some([1; 32]), log).unwrap();
        let e = ks
            .bind_to_log(Some([2; 32]), "store.path /typo.db")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("store.path /typo.db") && e.contains("belongs to another log"),
            "{e}"
        );
        // Once bound, an empty log is refused even without keys.
        ks.delete(KeyId::from_random([1; 16])).unwrap();
        assert!(ks.bind_to_log(None, log).is_err());
        // The binding is in the file.
        ks.close();
        drop(ks);
        let again = KeyStore::open(&path).unwrap();
        assert!(again.bind_to_log(Some([2; 32]), log).is_err());
        again.bind_to_log(Some([1; 32]), log).unwrap();
    }

    /// Start-up's vetting of a new key store beside an empty log: it passes.
    fn adopt_empty(ks: &KeyStore, log: &str) {
        let keys = crate::app::secrets::Keys::from_master(&[1; 32]);
        ks.adopt(
            &crate::core::State::default(),
            &keys,
            log,
            "secrets.key_file /k",
        )
        .unwrap();
    }

    /// A new key store writes no binding until start-up has vetted it: refused, it leaves no
    /// `meta` (and no file, if the open created it); vetted, the pending binding is written.
    #[test]
    fn a_new_key_store_binds_only_once_vetted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let log = "store.path /site/events.db";
        let ks = KeyStore::open(&path).unwrap();
        ks.bind_to_log(Some([1; 32]), log).unwrap();
        ks.check_master_key([9; 32], "secrets.key_file /k").unwrap();
        // Seen by this process, not yet in the file.
        assert!(ks.bind_to_log(Some([2; 32]), log).is_err());
        let c = Connection::open(&path).unwrap();
        let rows: i64 = c
            .query_row("SELECT count(*) FROM meta", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
        drop(c);
        adopt_empty(&ks, log);
        ks.close();
        drop(ks);
        let again = KeyStore::open(&path).unwrap();
        assert!(again.bind_to_log(Some([2; 32]), log).is_err());
        assert!(
            again
                .check_master_key([8; 32], "secrets.key_file /k")
                .is_err()
        );
        again
            .check_master_key([9; 32], "secrets.key_file /k")
            .unwrap();
    }

    /// The master key's check is recorded the first time and compared afterwards; a master
    /// key may be generated only for a new site.
    #[test]
    fn a_key_store_recognises_its_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let ks = KeyStore::open(&path).unwrap();
        let log = "store.path /site/events.db";
        assert_eq!(ks.master_key_needed(false, log).unwrap(), None);
        adopt_empty(&ks, log);
        assert!(
            ks.master_key_needed(true, log)
                .unwrap()
                .unwrap()
                .contains(log)
        );
        ks.check_master_key([1; 32], "secrets.key_file /k").unwrap();
        ks.check_master_key([1; 32], "secrets.key_file /k").unwrap();
        // A check recorded: the key must exist even with an empty log and no data keys.
        assert!(ks.master_key_needed(false, log).unwrap().is_some());
        let e = ks
            .check_master_key([2; 32], "secrets.key_file /other")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secrets.key_file /other")
                && e.contains(&path.display().to_string())
                && e.contains("is not the one"),
            "{e}"
        );
    }

    /// A file that is not a database is named, with its key.
    #[test]
    fn a_corrupt_key_store_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        std::fs::write(&path, vec![0x5a; 4096]).unwrap();
        let e = match KeyStore::open(&path) {
            Ok(_) => panic!("a corrupt key store opened"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(&format!("secrets.key_store {}", path.display())),
            "{e}"
        );
    }
}
