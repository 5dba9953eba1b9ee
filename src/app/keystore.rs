//! The key store: wrapped per-user data keys, in their own SQLite file, outside the log.
//!
//! Invariants: a key is written (and synced) before the event that references it is appended;
//! deletion overwrites the row's bytes (`secure_delete`) and uses a rollback journal, not WAL,
//! so a destroyed key does not linger in a write-ahead log.

use crate::core::KeyId;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
#[error("key store: {0}")]
pub struct KeyStoreError(String);

fn err(e: impl std::fmt::Display) -> KeyStoreError {
    KeyStoreError(e.to_string())
}

pub struct KeyStore {
    conn: Mutex<Connection>,
    /// The exclusive lock on `<path>.lock`, held until [`KeyStore::close`]: one palmgate
    /// process per key store. A second one (another log configured with the same
    /// `secrets.key_store`) would destroy, at its start-up, every key its own log does not
    /// reference: the first one's users' keys.
    lock: Mutex<Option<std::fs::File>>,
}

impl KeyStore {
    pub fn open(path: &Path) -> Result<KeyStore, KeyStoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let lock = crate::store::sqlite::lock_beside(path, "secrets.key_store").map_err(err)?;
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS data_keys (id TEXT PRIMARY KEY, wrapped BLOB NOT NULL)",
        )
        .map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(KeyStore {
            conn: Mutex::new(conn),
            lock: Mutex::new(Some(lock)),
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
}
