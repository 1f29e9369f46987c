//! `cosell-sync restore BACKUP`: puts a backup at `[state] path` so the service can open it,
//! on a fresh host too. Refused while a process holds the worker lock (the daemon runs); the
//! copy is checked (`integrity_check`, a schema this binary reads), made a single file, given
//! the state directory's owner and mode 0600, and renamed into place after the old file's WAL
//! and shared-memory files are removed (a stale WAL would be replayed into the restored file).
//! A copy made with plain `cp` by root stays root's, and the service (a `DynamicUser=`) then
//! fails with "unable to open database file": hence this command.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::StoreError;

/// What a restore installed.
#[derive(Debug)]
pub(crate) struct RestoreReport {
    pub(crate) path: PathBuf,
    /// `(schema version, referrals)` of the copy.
    pub(crate) contents: (i64, i64),
    /// `(uid, gid)` given to the file: the state directory's.
    pub(crate) owner: (u32, u32),
}

/// Why a restore did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestoreError {
    #[error("a cosell-sync process holds {lock}: stop the daemon first (`systemctl stop cosell-sync`), then restore")]
    Running { lock: PathBuf },
    #[error("{backup}: {what}")]
    Bad { backup: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Installs `backup` as the database at `db` (see the module's doc).
pub(crate) fn restore(backup: &Path, db: &Path) -> Result<RestoreReport, RestoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RestoreError::Io { path, source }
    };
    if !backup.is_file() {
        return Err(RestoreError::Bad {
            backup: backup.into(),
            what: "no such file".into(),
        });
    }
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A fresh host: the directory as the daemon would make it. Under `DynamicUser=` systemd
    // moves a root-owned /var/lib/cosell-sync into /var/lib/private and re-owns it at start.
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    refuse_if_running(db)?;
    let owner = std::fs::metadata(dir).map_err(io(dir))?;
    // Beside the target, so the rename is atomic; a leftover of an earlier try is replaced.
    let tmp = dir.join(format!(".restoring.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        std::fs::copy(backup, &tmp).map_err(io(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
        let contents = check(backup, &tmp)?;
        std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid())).map_err(io(&tmp))?;
        for stale in ["-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{stale}", db.display()));
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&file)(e)),
                _ => {}
            }
        }
        std::fs::rename(&tmp, db).map_err(io(db))?;
        Ok(RestoreReport {
            path: db.to_path_buf(),
            contents,
            owner: (owner.uid(), owner.gid()),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The worker lock beside the database (as `run` takes it): held means the daemon runs. The
/// lock file is never created here (a root-owned one would lock the service out).
fn refuse_if_running(db: &Path) -> Result<(), RestoreError> {
    let canonical = std::fs::canonicalize(db).unwrap_or_else(|_| {
        let dir = db.parent().unwrap_or(Path::new("."));
        std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .join(db.file_name().unwrap_or_default())
    });
    let lock = canonical.with_extension("lock");
    let Ok(file) = std::fs::File::open(&lock) else {
        return Ok(());
    };
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(_) => Err(RestoreError::Running { lock }),
    }
}

/// The copy's integrity and schema, and a single file (no WAL) before it is renamed in.
fn check(backup: &Path, copy: &Path) -> Result<(i64, i64), RestoreError> {
    let bad = |what: String| RestoreError::Bad {
        backup: backup.into(),
        what,
    };
    let conn = Connection::open(copy).map_err(|e| bad(format!("not an SQLite database: {e}")))?;
    let ok = super::integrity_check(&conn).map_err(|e| bad(format!("not readable: {e}")))?;
    if ok != "ok" {
        return Err(bad(format!("failed its integrity check: {ok}")));
    }
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(StoreError::from)?;
    if found > super::SCHEMA_VERSION {
        return Err(bad(format!(
            "schema version {found} is newer than this binary's {}; restore it with a newer cosell-sync",
            super::SCHEMA_VERSION
        )));
    }
    let referrals = conn
        .query_row("SELECT COUNT(*) FROM referrals", [], |r| r.get(0))
        .map_err(|e| bad(format!("not a cosell-sync database: {e}")))?;
    conn.execute_batch("PRAGMA journal_mode = DELETE;")
        .map_err(StoreError::from)?;
    Ok((found, referrals))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup_of_a_store(dir: &Path) -> PathBuf {
        let db = dir.join("live.db");
        drop(super::super::Store::open(&db).unwrap());
        let backup = dir.join("backup.db");
        super::super::backup::backup(&db, &backup).unwrap();
        backup
    }

    #[test]
    fn a_restore_takes_the_directorys_owner_0600_and_drops_the_stale_wal() {
        let dir = tempfile::tempdir().unwrap();
        let backup = backup_of_a_store(dir.path());
        let state = dir.path().join("state");
        let db = state.join("state.db");
        // A fresh host: no state directory yet.
        let report = restore(&backup, &db).unwrap();
        let meta = std::fs::metadata(&db).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        assert_eq!(report.owner, (meta.uid(), meta.gid()));
        // A stale WAL of the file replaced goes.
        std::fs::write(state.join("state.db-wal"), b"stale").unwrap();
        restore(&backup, &db).unwrap();
        assert!(!state.join("state.db-wal").exists());
        assert!(super::super::Store::open(&db).is_ok());
        // Only the database is left in the directory (no temporary file).
        let names: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.to_string_lossy().starts_with("state.")),
            "{names:?}"
        );
    }

    #[test]
    fn a_restore_is_refused_while_the_lock_is_held_or_for_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let backup = backup_of_a_store(dir.path());
        let db = dir.path().join("state.db");
        let lock = std::fs::File::create(dir.path().join("state.lock")).unwrap();
        lock.lock().unwrap();
        let e = restore(&backup, &db).unwrap_err();
        assert!(e.to_string().contains("stop the daemon first"), "{e}");
        drop(lock);
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"not a database at all, not even close").unwrap();
        let e = restore(&junk, &db).unwrap_err().to_string();
        assert!(e.contains("junk.db"), "{e}");
        assert!(!db.exists(), "nothing installed");
    }
}
