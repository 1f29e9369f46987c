//! `cosell-sync backup PATH`: a consistent copy of the database with SQLite's online backup
//! API, safe while `run` writes (WAL readers never block the writer). Every page is copied in
//! one step, inside one read transaction: a copy in small steps restarts whenever the daemon
//! commits, and under a busy forward never finished (51 s). The copy is written beside its
//! destination and renamed into place, so a half-written backup never carries the final name
//! and is removed on any failure. A directory gets `DIR/state-<UTC time>.db`; a path of the
//! live database's own files (the database, `-wal`, `-shm`, `-journal`) is refused before
//! anything is written ([`destination`]). Restoring is stopping the daemon and
//! putting the copy in place (docs/operations.md "Backup and restore"); an old copy is safe
//! because the daemon re-links every lead from Partner Center (see `sync::adopt`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// A destination `backup` refuses (a usage error: the path is wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BadDestination {
    /// One of the live database's files: writing there would replace what the daemon uses.
    LiveFile { dest: PathBuf, live: PathBuf },
}

impl std::fmt::Display for BadDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadDestination::LiveFile { dest, live } => write!(
                f,
                "{} is the live database's own file {}: a backup there would replace it under the daemon; name another path",
                dest.display(),
                live.display()
            ),
        }
    }
}

/// Where a backup to `dest` goes: `dest` itself, or `dest/state-<UTC time>.db` when it is a
/// directory; never one of the live database's files (compared canonicalized, so a symlink,
/// `..` or another name of the same file is caught, and by inode for a hard link).
pub(crate) fn destination(
    db: &Path,
    dest: &Path,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<PathBuf, BadDestination> {
    let dest = if dest.is_dir() {
        dest.join(format!("state-{}.db", now.format("%Y%m%dT%H%M%SZ")))
    } else {
        dest.to_path_buf()
    };
    let resolved = canonical(&dest);
    let db_file = canonical(db);
    let mut live = vec![db_file.clone()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = db_file.clone().into_os_string();
        name.push(suffix);
        live.push(PathBuf::from(name));
    }
    // The worker lock (`App::become_worker`): replacing it would let a second worker in.
    live.push(db_file.with_extension("lock"));
    for file in live {
        if resolved == file || same_inode(&dest, &file) {
            return Err(BadDestination::LiveFile { dest, live: file });
        }
    }
    Ok(dest)
}

/// `path` canonicalized; a file that does not exist yet by its canonical directory.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir)
                .map(|d| d.join(name))
                .unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

fn same_inode(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// What a backup wrote.
#[derive(Debug, Clone)]
pub(crate) struct BackupReport {
    /// Where it went (a directory's `state-<time>.db`).
    pub(crate) path: PathBuf,
    pub(crate) bytes: u64,
    pub(crate) schema_version: i64,
    pub(crate) referrals: i64,
}

/// Copies the database at `db` to `dest` (mode 0600; `dest` as [`destination`] resolved it),
/// every page in one step from one read transaction (the daemon keeps writing; the copy is
/// the snapshot the step began with), and checks the copy's integrity before renaming it in.
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
            // All pages at once (-1): one read transaction, so a commit by the daemon cannot
            // restart the copy. WAL readers do not block the writer, so it waits for nobody.
            // Busy or Locked only while another connection recovers the WAL: a short retry.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                match step.step(-1)? {
                    rusqlite::backup::StepResult::Done => break,
                    _ if std::time::Instant::now() >= deadline => {
                        return Err(StoreError::Worker(
                            "the database stayed locked for 30 s; try again".into(),
                        ))
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        let ok = super::integrity_check(&copy)?;
        if ok != "ok" {
            return Err(StoreError::Worker(format!(
                "the copy failed its integrity check: {ok}"
            )));
        }
        let report = BackupReport {
            path: dest.to_path_buf(),
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
    if let Err(source) = std::fs::rename(&tmp, dest) {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::Directory {
            path: dest.to_path_buf(),
            source,
        });
    }
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

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-12-07T11:40:05Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    /// Issue 30 item 3: every name of the live database's files is refused; a directory gets
    /// a timestamped file inside it.
    #[test]
    fn the_live_databases_files_are_refused_by_any_name_and_a_directory_gets_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let store = super::super::Store::open(&db).unwrap();
        store
            .call_blocking(|c| Ok(c.execute_batch("PRAGMA user_version")?))
            .unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::os::unix::fs::symlink(&db, dir.path().join("link.db")).unwrap();
        std::fs::hard_link(&db, dir.path().join("hard.db")).unwrap();
        for bad in [
            db.clone(),
            dir.path().join("state.db-wal"),
            dir.path().join("state.db-shm"),
            dir.path().join("state.db-journal"),
            dir.path().join("state.lock"),
            sub.join("../state.db"),
            dir.path().join("link.db"),
            dir.path().join("hard.db"),
        ] {
            let e = destination(&db, &bad, now()).unwrap_err();
            assert!(e.to_string().contains("live database"), "{e}");
        }
        // Relative to the working directory, the same file.
        let here = std::env::current_dir().unwrap();
        let relative = pathdiff(&db, &here);
        assert!(
            destination(&db, &relative, now()).is_err(),
            "{}",
            relative.display()
        );
        assert_eq!(
            destination(&db, &sub, now()).unwrap(),
            sub.join("state-20261207T114005Z.db")
        );
        let other = dir.path().join("copy.db");
        assert_eq!(destination(&db, &other, now()).unwrap(), other);
        drop(store);
    }

    /// `a` as a path relative to `base` (`../../x`), for the test above.
    fn pathdiff(a: &Path, base: &Path) -> PathBuf {
        let (a, base) = (canonical(a), canonical(base));
        let common = a
            .components()
            .zip(base.components())
            .take_while(|(x, y)| x == y)
            .count();
        let mut out = PathBuf::new();
        for _ in base.components().skip(common) {
            out.push("..");
        }
        for c in a.components().skip(common) {
            out.push(c);
        }
        out
    }

    /// A backup that fails (here: its destination's directory vanished under it, or the rename
    /// meets a directory) leaves no partial copy behind.
    #[test]
    fn a_failed_backup_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        drop(super::super::Store::open(&db).unwrap());
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), "x").unwrap();
        // `backup` itself (not `destination`) given a non-empty directory: the rename fails.
        assert!(backup(&db, &target).is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Under a writer that commits without pause, the copy still finishes in bounded time
    /// (the stepwise copy restarted at every commit and finished only when the writer
    /// stopped), and is a whole database.
    #[test]
    fn a_backup_under_a_writer_that_never_pauses_finishes_in_bounded_time() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        drop(super::super::Store::open(&db).unwrap());
        let conn = Connection::open(&db).unwrap();
        // About 20 MB: many steps for a stepwise copy.
        conn.execute_batch(
            "CREATE TABLE filler (x BLOB);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 5000)
             INSERT INTO filler SELECT randomblob(4000) FROM c;",
        )
        .unwrap();
        drop(conn);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let commits = std::sync::Arc::new(AtomicU64::new(0));
        let writer = {
            let (db, stop, commits) = (db.clone(), stop.clone(), commits.clone());
            std::thread::spawn(move || {
                let c = Connection::open(&db).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                let started = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                    c.execute("INSERT INTO filler VALUES (randomblob(100))", [])
                        .unwrap();
                    commits.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        while commits.load(Ordering::Relaxed) < 10 {
            std::thread::yield_now();
        }
        let started = std::time::Instant::now();
        let dest = dir.path().join("copy.db");
        let report = backup(&db, &dest).unwrap();
        let took = started.elapsed();
        let during = commits.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        println!(
            "backup of {} bytes under a writer: {took:?} ({during} commits)",
            report.bytes
        );
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(report.bytes > 20_000_000, "{}", report.bytes);
        let copy = Connection::open(&dest).unwrap();
        let rows: i64 = copy
            .query_row("SELECT COUNT(*) FROM filler", [], |r| r.get(0))
            .unwrap();
        assert!(rows >= 5000, "{rows}");
    }
}
