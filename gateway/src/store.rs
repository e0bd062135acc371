//! Stored WorkerCode, durable across restarts: an embedded SQLite database under `state_dir`,
//! fronted by an in-memory map so `get()` never touches the disk on the request path.
//!
//! Ids are immutable: storing different code under an existing id is a conflict (clients use
//! versioned ids).
//!
//! [`Stored`] is what the ingress uses: this store for one replica, or the Redis store of
//! [`crate::cluster`] shared by every replica (`shared.redis`).

use isogate_pool::{CodeDigest, SealedCode, WorkerCode};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Cannot create the state directory.
    #[error("cannot create state_dir {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("worker store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row does not parse (the database was edited by hand or is corrupt).
    #[error("worker store: stored code of {tenant}/{id} is invalid: {message}")]
    Corrupt {
        /// Tenant.
        tenant: String,
        /// Worker id.
        id: String,
        /// What is wrong.
        message: String,
    },
}

/// The stored Workers of this gateway: local to the replica (SQLite) or shared by every
/// replica (Redis).
pub enum Stored {
    /// `state_dir/workers.sqlite3`.
    Local(Arc<WorkerStore>),
    /// `shared.redis`.
    Shared(Arc<crate::cluster::Shared>),
}

/// Why a stored-Worker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    /// The shared store cannot be reached now: retry.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (a disk or database fault, corrupt data).
    #[error("{0}")]
    Failed(String),
}

impl From<crate::cluster::SharedError> for StoredError {
    fn from(e: crate::cluster::SharedError) -> Self {
        match e {
            crate::cluster::SharedError::Unavailable(_) => StoredError::Unavailable(e.to_string()),
            crate::cluster::SharedError::Corrupt { .. } => StoredError::Failed(e.to_string()),
        }
    }
}

impl Stored {
    /// The stored code of `tenant`/`id`.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<SealedCode>, StoredError> {
        match self {
            Stored::Local(store) => Ok(store.get(tenant, id)),
            Stored::Shared(shared) => Ok(shared.get(tenant, id).await?),
        }
    }

    /// Stores `code` under a free id (see [`PutOutcome`]).
    pub async fn put(
        &self,
        tenant: &str,
        id: &str,
        code: WorkerCode,
    ) -> Result<PutOutcome, StoredError> {
        match self {
            Stored::Local(store) => {
                let (store, t, i) = (store.clone(), tenant.to_string(), id.to_string());
                tokio::task::spawn_blocking(move || store.put(&t, &i, code))
                    .await
                    .map_err(|e| StoredError::Failed(format!("worker store task failed: {e}")))?
                    .map_err(|e| StoredError::Failed(e.to_string()))
            }
            Stored::Shared(shared) => Ok(shared.put(tenant, id, code).await?),
        }
    }

    /// Forgets `tenant`/`id`; whether it existed.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, StoredError> {
        match self {
            Stored::Local(store) => {
                let (store, t, i) = (store.clone(), tenant.to_string(), id.to_string());
                tokio::task::spawn_blocking(move || store.delete(&t, &i))
                    .await
                    .map_err(|e| StoredError::Failed(format!("worker store task failed: {e}")))?
                    .map_err(|e| StoredError::Failed(e.to_string()))
            }
            Stored::Shared(shared) => Ok(shared.delete(tenant, id).await?),
        }
    }

    /// The ids stored for `tenant`, sorted.
    pub async fn ids(&self, tenant: &str) -> Result<Vec<String>, StoredError> {
        match self {
            Stored::Local(store) => Ok(store.ids(tenant)),
            Stored::Shared(shared) => Ok(shared.ids(tenant).await?),
        }
    }

    /// Bytes the store takes in `state_dir` (blocking: file metadata); 0 for the shared store.
    pub fn disk_bytes(&self) -> u64 {
        match self {
            Stored::Local(store) => store.disk_bytes(),
            Stored::Shared(_) => 0,
        }
    }

    /// The shared store, if this replica uses one.
    pub fn shared(&self) -> Option<&Arc<crate::cluster::Shared>> {
        match self {
            Stored::Shared(shared) => Some(shared),
            Stored::Local(_) => None,
        }
    }
}

/// What [`WorkerStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored now.
    Created,
    /// The identical code was already stored.
    Unchanged,
    /// Different code is stored under this id.
    Conflict,
}

type Key = (String, String);

/// The worker store.
pub struct WorkerStore {
    conn: Mutex<Connection>,
    cache: RwLock<HashMap<Key, SealedCode>>,
    /// The database file (its `-wal` and `-shm` files sit beside it).
    path: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkerStore {
    /// Opens (creating if needed) `state_dir/workers.sqlite3` and loads every stored Worker.
    pub fn open(state_dir: &Path) -> Result<WorkerStore, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join("workers.sqlite3");
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a 201 means the code is on disk.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS workers (
                tenant TEXT NOT NULL,
                id TEXT NOT NULL,
                digest BLOB NOT NULL,
                code TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                PRIMARY KEY (tenant, id)
            );",
        )?;
        let mut cache = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT tenant, id, code FROM workers")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (tenant, id, code) = row?;
                let code: WorkerCode =
                    serde_json::from_str(&code).map_err(|e| StoreError::Corrupt {
                        tenant: tenant.clone(),
                        id: id.clone(),
                        message: e.to_string(),
                    })?;
                cache.insert((tenant, id), SealedCode::new(code));
            }
        }
        Ok(WorkerStore {
            conn: Mutex::new(conn),
            cache: RwLock::new(cache),
            path,
        })
    }

    /// Bytes the store takes in `state_dir`: the database and its write-ahead log (blocking:
    /// file metadata).
    pub fn disk_bytes(&self) -> u64 {
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let mut name = self.path.clone().into_os_string();
                name.push(suffix);
                std::fs::metadata(name).ok()
            })
            .map(|m| m.len())
            .sum()
    }

    /// The stored code of `tenant`/`id`.
    pub fn get(&self, tenant: &str, id: &str) -> Option<SealedCode> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant.to_string(), id.to_string()))
            .cloned()
    }

    /// Ids stored for `tenant`, sorted.
    pub fn ids(&self, tenant: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|(t, _)| t == tenant)
            .map(|(_, id)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Stores `code` under `tenant`/`id` (blocking: call from a blocking context). The row is
    /// committed before this returns `Created`.
    pub fn put(&self, tenant: &str, id: &str, code: WorkerCode) -> Result<PutOutcome, StoreError> {
        let sealed = SealedCode::new(code);
        let digest: CodeDigest = sealed.digest();
        let conn = lock(&self.conn);
        let existing: Option<Vec<u8>> = conn
            .query_row(
                "SELECT digest FROM workers WHERE tenant = ?1 AND id = ?2",
                params![tenant, id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(existing) = existing {
            return Ok(if existing == digest.0 {
                PutOutcome::Unchanged
            } else {
                PutOutcome::Conflict
            });
        }
        let json =
            serde_json::to_string(sealed.code().as_ref()).map_err(|e| StoreError::Corrupt {
                tenant: tenant.into(),
                id: id.into(),
                message: e.to_string(),
            })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        conn.execute(
            "INSERT INTO workers (tenant, id, digest, code, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant, id, &digest.0[..], json, now],
        )?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((tenant.into(), id.into()), sealed);
        Ok(PutOutcome::Created)
    }

    /// Forgets `tenant`/`id` (blocking). Returns whether it existed.
    pub fn delete(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let conn = lock(&self.conn);
        let n = conn.execute(
            "DELETE FROM workers WHERE tenant = ?1 AND id = ?2",
            params![tenant, id],
        )?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(tenant.to_string(), id.to_string()));
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(src: &str) -> WorkerCode {
        serde_json::from_value(serde_json::json!({"mainModule": "w.js", "modules": {"w.js": src}}))
            .unwrap()
    }

    #[test]
    fn put_is_idempotent_for_identical_code_and_conflicts_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkerStore::open(dir.path()).unwrap();
        let empty = store.disk_bytes();
        assert!(empty > 0);
        assert_eq!(
            store.put("a", "w1", code("x")).unwrap(),
            PutOutcome::Created
        );
        assert_eq!(
            store.put("a", "w1", code("x")).unwrap(),
            PutOutcome::Unchanged
        );
        assert_eq!(
            store.put("a", "w1", code("y")).unwrap(),
            PutOutcome::Conflict
        );
        assert_eq!(
            store.put("b", "w1", code("y")).unwrap(),
            PutOutcome::Created
        );
        assert_eq!(store.ids("a"), vec!["w1"]);
        assert!(store.get("a", "w1").is_some());
        assert!(store.get("c", "w1").is_none());
        // The write-ahead log holds the writes: the store's footprint grew.
        assert!(store.disk_bytes() > empty);
    }

    #[test]
    fn stored_code_survives_reopen_and_delete_forgets() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = WorkerStore::open(dir.path()).unwrap();
            store.put("a", "w1", code("x")).unwrap();
            store.put("a", "w2", code("y")).unwrap();
            assert!(store.delete("a", "w2").unwrap());
            assert!(!store.delete("a", "w2").unwrap());
        }
        let store = WorkerStore::open(dir.path()).unwrap();
        assert_eq!(store.get("a", "w1").unwrap().code().as_ref(), &code("x"));
        assert!(store.get("a", "w2").is_none());
    }
}
