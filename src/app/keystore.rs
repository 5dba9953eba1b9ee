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
}

impl KeyStore {
    pub fn open(path: &Path) -> Result<KeyStore, KeyStoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
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
        })
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
