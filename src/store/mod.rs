//! The state store: one SQLite file (WAL, `busy_timeout`), numbered migrations from
//! `migrations/` applied at start-up, and a schema version the code checks (`user_version`).
//!
//! All database work runs on tokio's blocking pool through [`Store::call`], never on the async
//! worker threads. The table families live in submodules as plain functions over a
//! `rusqlite::Connection`, so they are testable without a runtime.

pub mod alerts;
pub mod gauges;
pub mod google;
pub mod outbox;
pub mod referrals;
pub mod responses;
pub mod runs;
pub mod schedule;
pub mod views;
pub mod webhook;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// The migrations, in order. The file name's number is the schema version it brings.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_init.sql",
        include_str!("../../migrations/0001_init.sql"),
    ),
    (
        2,
        "0002_google_outbox.sql",
        include_str!("../../migrations/0002_google_outbox.sql"),
    ),
    (
        3,
        "0003_alerts.sql",
        include_str!("../../migrations/0003_alerts.sql"),
    ),
    (
        4,
        "0004_two_lanes.sql",
        include_str!("../../migrations/0004_two_lanes.sql"),
    ),
    (
        6,
        "0006_webhook_events.sql",
        include_str!("../../migrations/0006_webhook_events.sql"),
    ),
    (
        7,
        "0007_responses.sql",
        include_str!("../../migrations/0007_responses.sql"),
    ),
];

/// The schema version this binary reads and writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path}: cannot create its directory: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database {path} has schema version {found}, newer than this binary's {supported}; upgrade cosell-sync")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("database migration {name} failed: {source}")]
    Migration {
        name: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A read-only command found no database: it never creates one.
    #[error(
        "no database at {path} (check state.path; `cosell-sync sync` or the daemon creates it)"
    )]
    Missing { path: PathBuf },
    #[error("database {path} has schema version {found}, older than this binary's {supported}; run `cosell-sync sync` (or start the daemon) once to migrate it")]
    TooOld {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database worker stopped: {0}")]
    Worker(String),
}

/// Copies the database at `real` to `copy` as one consistent snapshot, even while a daemon
/// writes (`VACUUM INTO`), opening `real` read-only. For `--dry-run`'s throw-away copy.
pub fn snapshot_copy(real: &Path, copy: &Path) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(real, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Open {
            path: real.to_path_buf(),
            source,
        })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute("VACUUM INTO ?1", [copy.display().to_string()])?;
    Ok(())
}

/// A handle on the database, cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        create_private(path).map_err(|source| StoreError::Directory {
            path: path.to_path_buf(),
            source,
        })?;
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        // WAL lets `status` read while `run` writes; NORMAL sync is durable across process
        // crashes (only an OS crash can lose the last commits, never corrupt the file).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .map_err(open_err)?;
        migrate(&mut conn, path)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing database for reading only (`status`, `outbox list`, `alerts list`,
    /// `audit`): never creates a file or directory, never migrates, and works on a database
    /// the user may only read.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        use rusqlite::OpenFlags;
        if !path.is_file() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            return Err(StoreError::TooOld {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }

    /// Runs `f` with the connection on the current thread (for commands outside a runtime).
    pub fn call_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// Creates `path` with mode 0600 unless it exists: the database holds customer data, and
/// SQLite gives its `-wal` and `-shm` files the database file's mode.
pub fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies every migration newer than the database's `user_version`, each in its own
/// transaction together with the version bump, so a crash leaves a whole version or none.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .and_then(|_| tx.execute_batch(&format!("PRAGMA user_version = {version}")))
            .map_err(|source| StoreError::Migration { name, source })?;
        tx.commit()?;
        tracing::info!(version, name, "database migrated");
    }
    Ok(())
}

/// `PRAGMA integrity_check`; `ok` when the file is sound.
pub fn integrity_check(conn: &Connection) -> Result<String, StoreError> {
    Ok(conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_an_empty_database_and_reopens_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.db");
        let store = Store::open(&path).unwrap();
        store
            .call_blocking(|c| {
                let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
                assert_eq!(v, SCHEMA_VERSION);
                c.execute(
                    "INSERT INTO sync_watermarks (name, value, updated_at) VALUES ('w', 'x', 'y')",
                    [],
                )?;
                Ok(())
            })
            .unwrap();
        drop(store);
        let again = Store::open(&path).unwrap();
        let kept: String = again
            .call_blocking(|c| {
                Ok(c.query_row("SELECT value FROM sync_watermarks", [], |r| r.get(0))?)
            })
            .unwrap();
        assert_eq!(kept, "x", "reopening must not re-run migrations");
        let mode: String = again
            .call_blocking(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_new_database_is_private_and_read_only_opening_never_creates_or_writes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("typo/state.db");
        let err = Store::open_read_only(&missing).unwrap_err();
        assert!(err.to_string().contains("no database at"), "{err}");
        assert!(!dir.path().join("typo").exists(), "no directory is created");

        let path = dir.path().join("state.db");
        drop(Store::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let ro = Store::open_read_only(&path).unwrap();
        let n: i64 = ro
            .call_blocking(|c| Ok(c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn refuses_a_database_from_a_newer_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 999")
            .unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { found: 999, .. }),
            "{err}"
        );
    }
}
