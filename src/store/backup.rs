//! `cosell-sync backup PATH`: a consistent copy of the database with SQLite's online backup
//! API, safe while `run` writes (WAL readers never block the writer; the copy is one
//! snapshot). The copy is written beside its destination and renamed into place, so a
//! half-written backup never carries the final name. Restoring is stopping the daemon and
//! putting the copy in place (docs/operations.md "Backup and restore"); an old copy is safe
//! because the daemon re-links every lead from Partner Center (see `sync::adopt`).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// What a backup wrote.
#[derive(Debug, Clone)]
pub(crate) struct BackupReport {
    pub(crate) bytes: u64,
    pub(crate) schema_version: i64,
    pub(crate) referrals: i64,
}

/// Copies the database at `db` to `dest` (mode 0600), page by page in small steps so a
/// running daemon's writes interleave, and checks the copy's integrity before renaming it in.
pub(crate) fn backup(db: &Path, dest: &Path) -> Result<BackupReport, StoreError> {
    if !db.is_file() {
        return Err(StoreError::Missing {
            path: db.to_path_buf(),
        });
    }
    let open_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Open { path, source }
    };
    let source =
        Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(open_err(db))?;
    source.busy_timeout(Duration::from_secs(10))?;
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup.db".into());
    let tmp = dest.with_file_name(format!(".{file_name}.{}.partial", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    super::create_private(&tmp).map_err(|source| StoreError::Directory {
        path: tmp.clone(),
        source,
    })?;
    let result = (|| {
        let mut copy = Connection::open(&tmp).map_err(open_err(&tmp))?;
        {
            let step = rusqlite::backup::Backup::new(&source, &mut copy)?;
            // 256 pages (1 MiB) a step, a short pause between: the daemon's writer gets turns.
            step.run_to_completion(256, Duration::from_millis(5), None)?;
        }
        let ok = super::integrity_check(&copy)?;
        if ok != "ok" {
            return Err(StoreError::Worker(format!(
                "the copy failed its integrity check: {ok}"
            )));
        }
        let report = BackupReport {
            bytes: 0,
            schema_version: copy.query_row("PRAGMA user_version", [], |r| r.get(0))?,
            referrals: copy.query_row("SELECT COUNT(*) FROM referrals", [], |r| r.get(0))?,
        };
        // A single file: no WAL beside it.
        copy.execute_batch("PRAGMA journal_mode = DELETE;")?;
        Ok(report)
    })();
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, dest).map_err(|source| StoreError::Directory {
        path: dest.to_path_buf(),
        source,
    })?;
    report.bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_taken_while_a_writer_commits_is_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let store = super::super::Store::open(&db).unwrap();
        let writer = std::thread::spawn(move || {
            for i in 0..400 {
                store
                    .call_blocking(|c| {
                        c.execute(
                            "INSERT INTO health (key, value, updated_at) VALUES (?1, ?2, 'x')",
                            rusqlite::params![format!("k{i}"), "v".repeat(2000)],
                        )?;
                        Ok(())
                    })
                    .unwrap();
            }
        });
        let dest = dir.path().join("copy.db");
        let mut taken = 0;
        while !writer.is_finished() || taken == 0 {
            let report = backup(&db, &dest).unwrap();
            assert_eq!(report.schema_version, super::super::SCHEMA_VERSION);
            taken += 1;
        }
        writer.join().unwrap();
        let copy = Connection::open(&dest).unwrap();
        assert_eq!(super::super::integrity_check(&copy).unwrap(), "ok");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("copy.db-wal").exists());
        let err = backup(&dir.path().join("missing.db"), &dest).unwrap_err();
        assert!(err.to_string().contains("no database"), "{err}");
    }
}
