//! The state store: one SQLite file (WAL, `busy_timeout`), numbered migrations from
//! `migrations/` applied at start-up, and a schema version the code checks (`user_version`).
//!
//! All database work of the daemon runs on the connection's own thread through
//! [`Store::call`], never on the async worker threads. The table families live in submodules
//! as plain functions over a `rusqlite::Connection`, so they are testable without a runtime.

pub(crate) mod alerts;
pub(crate) mod answers;
pub(crate) mod backup;
pub(crate) mod gauges;
pub(crate) mod google;
pub(crate) mod invitations;
pub(crate) mod outbox;
pub(crate) mod referrals;
pub(crate) mod responses;
pub(crate) mod restore;
pub(crate) mod retention;
pub(crate) mod runs;
pub(crate) mod schedule;
pub(crate) mod triage;
pub(crate) mod views;
pub(crate) mod webhook;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// The migrations, in order. The file name's number is the schema version it brings.
/// There is no version 5: none was ever committed (the webhook's migration came as 6), and a
/// gap is harmless, since a database runs every migration above its version. Numbers are
/// never reused or shifted: a database at 6 must not run a new 5.
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
    (
        8,
        "0008_answers.sql",
        include_str!("../../migrations/0008_answers.sql"),
    ),
    (
        9,
        "0009_recovery.sql",
        include_str!("../../migrations/0009_recovery.sql"),
    ),
    (
        10,
        "0010_answers_due.sql",
        include_str!("../../migrations/0010_answers_due.sql"),
    ),
    (
        11,
        "0011_outbox_without_in_lists.sql",
        include_str!("../../migrations/0011_outbox_without_in_lists.sql"),
    ),
    (
        12,
        "0012_referrals_awaiting.sql",
        include_str!("../../migrations/0012_referrals_awaiting.sql"),
    ),
    (
        13,
        "0013_triage.sql",
        include_str!("../../migrations/0013_triage.sql"),
    ),
    (
        14,
        "0014_aws_invitations.sql",
        include_str!("../../migrations/0014_aws_invitations.sql"),
    ),
    (
        15,
        "0015_aws_answers.sql",
        include_str!("../../migrations/0015_aws_answers.sql"),
    ),
];

/// The schema version this binary reads and writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The file exists but this process may not write it: a copy put in place by root (`cp`
    /// keeps root as the owner) under a service that runs as its own user.
    #[error("database {path} is owned by uid {owner} (mode {mode:04o}) and this process (uid {uid}) cannot write it: a copy put in place as root stays root's. Fix: `chown --reference={dir} {path} && chmod 0600 {path}`, or install a backup with `cosell-sync restore BACKUP`, which does this")]
    NotOwned {
        path: PathBuf,
        dir: PathBuf,
        owner: u32,
        mode: u32,
        uid: u32,
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
    /// The file at the configured path is no longer the one this process opened (deleted,
    /// or replaced by a restore): writing on would go to an unlinked file and be lost.
    #[error("database {path} {what} while this process had it open; stopping so nothing is written into a file that is gone (start again: the daemon opens the file now at that path and re-links every lead from Partner Center)")]
    Replaced { path: PathBuf, what: &'static str },
    #[error("database: {}", describe(.0))]
    Sql(#[from] rusqlite::Error),
    #[error("database worker stopped: {0}")]
    Worker(String),
}

/// An SQLite error as an operator needs it: a full disk is named as such, with what to do.
fn describe(e: &rusqlite::Error) -> String {
    if is_disk_full(e) {
        format!("DISK FULL: {e} (SQLITE_FULL): the file system holding the database has no space left; free space there (docs/operations.md \"Disk full\") — nothing committed is lost, and the daemon carries on once writes succeed")
    } else {
        e.to_string()
    }
}

/// SQLITE_FULL: no space on the device (or the database at its page limit).
pub(crate) fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

impl StoreError {
    /// Whether this is a full disk (see [`is_disk_full`]).
    #[cfg(test)]
    pub(crate) fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sql(e) | StoreError::Open { source: e, .. } => is_disk_full(e),
            StoreError::Migration { source, .. } => is_disk_full(source),
            _ => false,
        }
    }
}

/// Copies the database at `real` to `copy` as one consistent snapshot, even while a daemon
/// writes (`VACUUM INTO`), opening `real` read-only. For `--dry-run`'s throw-away copy.
pub(crate) fn snapshot_copy(real: &Path, copy: &Path) -> Result<(), StoreError> {
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
    conn: Arc<Shared>,
    path: PathBuf,
    /// Device and inode of the file opened (see [`Store::check_identity`]).
    identity: Option<FileIdentity>,
}

/// Which file a path named when it was opened: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    pub(crate) fn of(path: &Path) -> std::io::Result<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// A panic in a call, as that call's error.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> StoreError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    StoreError::Worker(format!("a database call panicked: {what}"))
}

/// A call of [`Store::call`], run on the connection's thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// One connection, and the one thread that runs its asynchronous calls in order.
///
/// Every call holds the connection's lock for its whole run, so calls never ran in parallel;
/// on the runtime's blocking pool each one still cost a task, a wake-up of an idle pool thread
/// and, with several actions at once, threads queueing on the lock (about a tenth of a first
/// sync's CPU went to that hand-off). One thread fed by a queue takes the next call as soon as
/// one ends, without sleeping in between, and keeps one stack instead of up to sixteen.
/// Commands outside a runtime ([`Store::call_blocking`]) take the same lock directly, and so
/// does a short step of an action when no call holds it ([`Store::call_short`]).
struct Shared {
    conn: Arc<Mutex<Connection>>,
    /// Asynchronous calls made so far, queued or run in place: the executor keeps them to
    /// one per step of an action (issue 26).
    calls: std::sync::atomic::AtomicU64,
    /// Calls queued for the connection's thread and not begun: a short call runs in place
    /// only when this is 0, so it never goes ahead of one queued before it.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Started by the first asynchronous call (most commands never make one); `None` when the
    /// thread could not be started.
    worker: std::sync::OnceLock<Option<Worker>>,
}

struct Worker {
    jobs: std::sync::mpsc::Sender<Job>,
    thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("worker", &self.worker.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn new(conn: Connection) -> Shared {
        Shared {
            calls: std::sync::atomic::AtomicU64::new(0),
            queued: Arc::default(),
            conn: Arc::new(Mutex::new(conn)),
            worker: std::sync::OnceLock::new(),
        }
    }

    fn submit(&self, job: Job) -> Result<(), StoreError> {
        let worker = self.worker.get_or_init(|| {
            let (jobs, queue) = std::sync::mpsc::channel::<Job>();
            let conn = Arc::clone(&self.conn);
            let queued = Arc::clone(&self.queued);
            let thread = std::thread::Builder::new()
                .name("store".into())
                .spawn(move || {
                    // Ends when the last handle is dropped (the queue closes).
                    while let Ok(job) = queue.recv() {
                        let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                        queued.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                        job(&mut guard);
                    }
                });
            match thread {
                Ok(thread) => Some(Worker { jobs, thread }),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the database thread");
                    None
                }
            }
        });
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let sent = worker
            .as_ref()
            .and_then(|worker| worker.jobs.send(job).ok());
        if sent.is_none() {
            self.queued
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
        sent.ok_or_else(|| StoreError::Worker("the database thread is not running".into()))
    }
}

impl Drop for Shared {
    /// Closes the queue and waits for the thread, so the connection is closed (and its WAL
    /// checkpointed) when the last handle goes, as it was before the thread.
    fn drop(&mut self) {
        let Some(Some(Worker { jobs, thread })) = self.worker.take() else {
            return;
        };
        drop(jobs);
        // A call that owned the last handle runs on the thread itself: it cannot wait for
        // itself, and ends right after.
        if thread.thread().id() != std::thread::current().id() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database. A path already open in this
    /// process gets the same connection back: one writer connection per database per process,
    /// so a reload (which builds a new app) can never race the receiver's start-up handle for
    /// the write lock.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut writers = writers().lock().unwrap_or_else(|p| p.into_inner());
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        // Reused only while the path still names the file that connection opened: a database
        // deleted or replaced under the daemon gets a new connection, never the stale one.
        let now = FileIdentity::of(path).ok();
        let cached = writers
            .get(&key)
            .filter(|(_, identity)| now.is_some() && *identity == now)
            .and_then(|(conn, _)| conn.upgrade());
        if let Some(conn) = cached {
            return Ok(Store {
                conn,
                path: path.to_path_buf(),
                identity: now,
            });
        }
        let store = Store::open_writer(path)?;
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        writers.retain(|_, (w, _)| w.strong_count() > 0);
        writers.insert(key, (Arc::downgrade(&store.conn), store.identity));
        Ok(store)
    }

    fn open_writer(path: &Path) -> Result<Store, StoreError> {
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
        check_writable(path)?;
        create_private(path).map_err(|source| StoreError::Directory {
            path: path.to_path_buf(),
            source,
        })?;
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        // Every write transaction takes the write lock when it begins, waiting up to the busy
        // timeout for it: a deferred one that read first and then wants to write while another
        // connection (another process: `outbox retry`, `link`) committed fails at once with
        // "database is locked", whatever the timeout.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        // WAL lets `status` read while `run` writes; NORMAL sync is durable across process
        // crashes (only an OS crash can lose the last commits, never corrupt the file).
        // A checkpoint every 4,000 pages (16 MiB of WAL) instead of 1,000: a first sync
        // writes ~50 pages per referral, mostly the same few index pages again, and each
        // checkpoint copies every distinct page and syncs twice; 4x fewer of them cost ~5 %
        // less CPU. The WAL file keeps its largest size, 16 MiB, between checkpoints.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
             PRAGMA wal_autocheckpoint = 4000;",
        )
        .map_err(open_err)?;
        tune_statements(&conn).map_err(open_err)?;
        migrate(&mut conn, path)?;
        Ok(Store {
            conn: Arc::new(Shared::new(conn)),
            path: path.to_path_buf(),
            identity: FileIdentity::of(path).ok(),
        })
    }

    /// Opens an existing database for reading only (`status`, `outbox list`, `alerts list`,
    /// `audit`): never creates a file or directory, never migrates, and works on a database
    /// the user may only read.
    pub(crate) fn open_read_only(path: &Path) -> Result<Store, StoreError> {
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
        tune_statements(&conn).map_err(open_err)?;
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
            conn: Arc::new(Shared::new(conn)),
            path: path.to_path_buf(),
            identity: FileIdentity::of(path).ok(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that the configured path still names the file this store opened (same device
    /// and inode): a deleted database, or one replaced under a running daemon, is an error
    /// (the daemon stops) instead of writes into an unlinked file that vanish at exit.
    pub(crate) fn check_identity(&self) -> Result<(), StoreError> {
        let Some(opened) = self.identity else {
            return Ok(());
        };
        let what = match FileIdentity::of(&self.path) {
            Ok(now) if now == opened => return Ok(()),
            Ok(_) => "was replaced by another file",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "was deleted",
            // Unreadable metadata (a permission change) is not proof of a new file.
            Err(_) => return Ok(()),
        };
        Err(StoreError::Replaced {
            path: self.path.clone(),
            what,
        })
    }

    /// Runs `f` with the connection on the connection's thread (see [`Shared`]). A panic in
    /// `f` is this call's error; the thread and the connection carry on.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        (self.conn.calls).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.conn.submit(Box::new(move |conn: &mut Connection| {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)));
            // The caller may have gone (a cancelled future): the work is done all the same.
            let _ = reply.send(ran);
        }))?;
        match answer.await {
            Ok(ran) => ran.unwrap_or_else(|panic| Err(panicked(panic))),
            Err(_) => Err(StoreError::Worker("the database thread stopped".into())),
        }
    }

    /// [`Store::call`] for a step that touches a handful of rows by key (an action's take,
    /// claim or record): when no call runs or waits in the queue it runs at once on the
    /// calling thread, else it queues behind them like any other. Never for a pass over a
    /// table: it would hold a runtime thread for as long.
    ///
    /// Why: each hand-off to the connection's thread and back is two thread wake-ups, and a
    /// first sync makes six of these steps per referral. Run in place they saved 41 % of the
    /// first sync's context switches and 7 % of its CPU against `0bc82f1`
    /// (`docs/benchmarks.md`, "issue 26, a fifth session"). Like a queued call, it always
    /// runs to its end once begun (it never awaits), and a panic is its error.
    ///
    /// What can hold the runtime thread longer: the commit may run SQLite's automatic
    /// checkpoint (every 4,000 WAL pages: a few milliseconds, once per some thousand steps),
    /// and a write waits (up to the 10 s busy timeout) while another process holds the
    /// database's write lock (a command such as `accept` or `outbox retry`: milliseconds).
    /// Only one call holds the connection, so at most one runtime thread ever waits so.
    pub(crate) async fn call_short<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let f = match self.try_in_place(f) {
            Ok(ran) => {
                // Returned without yielding: a loop of short calls still gives the other
                // tasks of this runtime thread their turn.
                tokio::task::consume_budget().await;
                return ran;
            }
            Err(busy) => busy,
        };
        self.call(f).await
    }

    /// Runs `f` here if no call holds the connection or waits for it; gives it back
    /// otherwise.
    fn try_in_place<T, F>(&self, f: F) -> Result<Result<T, StoreError>, F>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError>,
    {
        if self.conn.queued.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return Err(f);
        }
        let mut conn = match self.conn.conn.try_lock() {
            Ok(conn) => conn,
            // Calls catch their panics, so nothing should poison it; taken over like `call`.
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(f),
        };
        (self.conn.calls).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut conn)));
        Ok(ran.unwrap_or_else(|panic| Err(panicked(panic))))
    }

    /// How many asynchronous calls ([`Store::call`], [`Store::call_short`]) this store has
    /// run so far.
    #[cfg(test)]
    pub(crate) fn calls(&self) -> u64 {
        self.conn.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` with the connection on the current thread (for commands outside a runtime).
    pub(crate) fn call_blocking<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// The writer connection of each database open in this process, by canonical path, with the
/// identity of the file it opened.
type Writers = std::collections::HashMap<PathBuf, (std::sync::Weak<Shared>, Option<FileIdentity>)>;

fn writers() -> &'static Mutex<Writers> {
    static WRITERS: std::sync::OnceLock<Mutex<Writers>> = std::sync::OnceLock::new();
    WRITERS.get_or_init(Mutex::default)
}

/// SQLite's query plan for `sql`, one step per line, its parameters unbound (plan tests).
#[cfg(test)]
pub(crate) fn query_plan(conn: &Connection, sql: &str) -> rusqlite::Result<String> {
    Ok(explained(conn, &format!("EXPLAIN QUERY PLAN {sql}"), 3)?.join("\n"))
}

/// The query plan of each statement on a new, empty database with every migration applied
/// (tests that hold a query to the index it must use).
#[cfg(test)]
pub(crate) fn query_plans_on_a_new_store(sqls: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("plans.db")).unwrap();
    sqls.iter()
        .map(|sql| store.call_blocking(|c| Ok(query_plan(c, sql)?)).unwrap())
        .collect()
}

/// The opcodes SQLite compiles `sql` to, its parameters unbound (tests of what a statement does).
#[cfg(test)]
pub(crate) fn opcodes(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    explained(conn, &format!("EXPLAIN {sql}"), 1)
}

#[cfg(test)]
fn explained(conn: &Connection, explain: &str, column: usize) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(explain)?;
    let unbound = vec![rusqlite::types::Null; stmt.parameter_count()];
    let rows = stmt.query_map(rusqlite::params_from_iter(unbound), |r| r.get(column))?;
    rows.collect()
}

/// How many compiled statements a connection keeps. A first sync runs a few dozen distinct
/// statements per referral round (pull, plan, create, write-back, alerts); rusqlite's
/// default of 16 evicted them in turn, so most were compiled again on every use.
const STATEMENT_CACHE: usize = 128;

/// Compiles each cached statement once. Without the query planner stability guarantee,
/// SQLite marks a statement whose plan may depend on a bound value (`WHERE id = ?1` is
/// enough) to be compiled again whenever its bindings are cleared, which rusqlite does each
/// time it returns a statement to its cache: the planner's per-referral read was compiled
/// anew for every referral. The guarantee makes plans independent of the values bound.
fn tune_statements(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Creates `path` with mode 0600 unless it exists: the database holds customer data, and
/// SQLite gives its `-wal` and `-shm` files the database file's mode.
/// An existing database this process cannot write is named with its owner and the fix,
/// instead of SQLite's "unable to open database file".
fn check_writable(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Ok(());
    };
    // SAFETY: access(2) reads a NUL-terminated path; geteuid(2) has no arguments.
    let (writable, uid) = unsafe {
        (
            libc::access(c_path.as_ptr(), libc::R_OK | libc::W_OK) == 0,
            libc::geteuid(),
        )
    };
    if writable {
        return Ok(());
    }
    Err(StoreError::NotOwned {
        path: path.to_path_buf(),
        dir: path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf(),
        owner: meta.uid(),
        mode: meta.mode() & 0o7777,
        uid,
    })
}

pub(crate) fn create_private(path: &Path) -> std::io::Result<()> {
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
pub(crate) fn integrity_check(conn: &Connection) -> Result<String, StoreError> {
    Ok(conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asynchronous calls run on the connection's own thread, in order; a call that panics is
    /// that call's error, and the next call runs on the same connection; dropping the last
    /// handle closes the connection (its WAL file is gone once the drop returns).
    #[tokio::test]
    async fn calls_run_in_order_and_a_panic_is_one_call_s_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path).unwrap();
        let writes: Vec<_> = (0..50)
            .map(|i| {
                let store = store.clone();
                async move {
                    store
                        .call(move |c| {
                            c.execute(
                                "INSERT INTO health (key, value, updated_at) VALUES (?1, ?2, 'x')",
                                rusqlite::params![format!("k{i:02}"), i.to_string()],
                            )?;
                            Ok(c.last_insert_rowid())
                        })
                        .await
                        .unwrap()
                }
            })
            .collect();
        let rowids = futures_util::future::join_all(writes).await;
        assert!(rowids.windows(2).all(|w| w[0] < w[1]), "{rowids:?}");
        let err = store
            .call(|_| -> Result<(), StoreError> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        let n: i64 = store
            .call(|c| Ok(c.query_row("SELECT COUNT(*) FROM health", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 50);
        drop(store);
        assert!(
            !dir.path().join("s.db-wal").exists(),
            "the connection is closed when the last handle goes"
        );
    }

    /// A short call runs in place when the connection is free, and waits its turn behind a
    /// running call, or a queued one, when not (never alongside it, never ahead of it); a
    /// panic in place is that call's error and leaves the connection usable by both kinds of
    /// call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_call_runs_in_place_when_free_and_queues_when_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let thread = || {
            std::thread::current()
                .name()
                .unwrap_or_default()
                .to_string()
        };
        // Free: in place, on a runtime thread.
        let here = store.call_short(move |_| Ok(thread())).await.unwrap();
        assert_ne!(here, "store");

        // Busy: a queued call holds the connection until released; the short call must
        // queue behind it (run on the connection's thread, after it, seeing its write).
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let long = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .call(move |c| {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        c.execute(
                            "INSERT INTO health (key, value, updated_at) VALUES ('long', '1', 'x')",
                            [],
                        )?;
                        Ok(())
                    })
                    .await
            })
        };
        started_rx.recv().unwrap();
        let before = store.calls();
        let short = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .call_short(move |c| {
                        let seen: i64 = c.query_row(
                            "SELECT COUNT(*) FROM health WHERE key = 'long'",
                            [],
                            |r| r.get(0),
                        )?;
                        Ok((thread(), seen))
                    })
                    .await
            })
        };
        // Counted once it is queued (it cannot run in place while the connection is held).
        while store.calls() == before {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        release_tx.send(()).unwrap();
        long.await.unwrap().unwrap();
        let (ran_on, seen) = short.await.unwrap().unwrap();
        assert_eq!(ran_on, "store", "queued behind the running call");
        assert_eq!(seen, 1, "after the running call, not alongside it");

        // A call waiting in the queue: the short call goes behind it, even with the
        // connection free at this instant.
        store
            .conn
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let behind = store.call_short(move |_| Ok(thread())).await.unwrap();
        store
            .conn
            .queued
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        assert_eq!(behind, "store", "never ahead of a queued call");

        let err = store
            .call_short(|_| -> Result<(), StoreError> { panic!("short boom") })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("short boom"), "{err}");
        for _ in 0..2 {
            let (n, ran_on): (i64, String) = store
                .call_short(move |c| {
                    let n = c.query_row("SELECT COUNT(*) FROM health", [], |r| r.get(0))?;
                    Ok((n, thread()))
                })
                .await
                .unwrap();
            assert_eq!(n, 1);
            assert_ne!(ran_on, "store", "in place again after the panic");
        }
        let n: i64 = store
            .call(|c| Ok(c.query_row("SELECT COUNT(*) FROM health", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    /// The planner reads one referral per statement run, thousands of times in a first sync:
    /// a cached statement must stay compiled whatever value is bound next, on the writer and on
    /// a read-only connection alike. (Without the stability guarantee SQLite compiled
    /// `WHERE id = ?1` again on every use: 4 recompilations in 5 runs.)
    #[test]
    fn a_cached_statement_is_compiled_once_whatever_value_is_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let writer = Store::open(&path).unwrap();
        let reader = Store::open_read_only(&path).unwrap();
        let sql = "SELECT r.id, l.lead_name FROM referrals r
                   LEFT JOIN links l ON l.referral_id = r.id WHERE r.id = ?1";
        for store in [&writer, &reader] {
            let recompiled = store
                .call_blocking(|c| {
                    for i in 0..5 {
                        let mut stmt = c.prepare_cached(sql)?;
                        let mut rows = stmt.query([format!("r-{i}")])?;
                        while rows.next()?.is_some() {}
                    }
                    let stmt = c.prepare_cached(sql)?;
                    Ok(stmt.get_status(rusqlite::StatementStatus::RePrepare))
                })
                .unwrap();
            assert_eq!(recompiled, 0, "recompiled {recompiled} times in 5 runs");
        }
    }

    /// Read-then-write transactions from the daemon's start-up handle, the handle a reload
    /// opened, and another process's connection, all at once: none fails with "database is
    /// locked" (a deferred transaction did, at once, whatever the busy timeout).
    #[test]
    fn writers_racing_after_a_reload_never_see_database_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let start_up = Store::open(&path).unwrap();
        let reloaded = Store::open(&path).unwrap();
        let other_process = Store::open_writer(&path).unwrap();
        start_up
            .call_blocking(|c| {
                c.execute(
                    "INSERT INTO sync_watermarks (name, value, updated_at) VALUES ('n', '0', '')",
                    [],
                )?;
                Ok(())
            })
            .unwrap();
        let writers: Vec<_> = [start_up, reloaded, other_process]
            .into_iter()
            .map(|store| {
                std::thread::spawn(move || {
                    let mut locked = 0;
                    for _ in 0..200 {
                        let step = store.call_blocking(|c| {
                            let tx = c.transaction()?;
                            let n: String = tx.query_row(
                                "SELECT value FROM sync_watermarks WHERE name = 'n'",
                                [],
                                |r| r.get(0),
                            )?;
                            let next = n.parse::<i64>().unwrap() + 1;
                            tx.execute(
                                "UPDATE sync_watermarks SET value = ?1 WHERE name = 'n'",
                                [next.to_string()],
                            )?;
                            tx.commit()?;
                            Ok(())
                        });
                        if let Err(e) = step {
                            assert!(e.to_string().contains("locked"), "{e}");
                            locked += 1;
                        }
                    }
                    locked
                })
            })
            .collect();
        let locked: i32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(locked, 0, "\"database is locked\" {locked} times");
        let total: String = Store::open(&path)
            .unwrap()
            .call_blocking(|c| {
                Ok(c.query_row(
                    "SELECT value FROM sync_watermarks WHERE name = 'n'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(total, "600", "no increment lost");
    }

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
    fn a_deleted_or_replaced_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        store.check_identity().unwrap();
        let copy = dir.path().join("copy.db");
        std::fs::copy(&path, &copy).unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = store.check_identity().unwrap_err();
        assert!(err.to_string().contains("was deleted"), "{err}");
        std::fs::rename(&copy, &path).unwrap();
        let err = store.check_identity().unwrap_err();
        assert!(err.to_string().contains("was replaced"), "{err}");
        let reopened = Store::open(&path).unwrap();
        assert!(reopened.check_identity().is_ok());
        // The process's shared writer is not handed back for a replaced file.
        assert!(!Arc::ptr_eq(&reopened.conn, &store.conn));
    }

    #[test]
    fn outbox_ids_are_never_reused_across_the_outbox_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            for &(version, _, sql) in MIGRATIONS.iter().filter(|m| m.0 < 8) {
                conn.execute_batch(sql).unwrap();
                conn.execute_batch(&format!("PRAGMA user_version = {version}"))
                    .unwrap();
            }
            let tx = conn.transaction().unwrap();
            for _ in 0..3 {
                tx.execute(
                    "INSERT INTO outbox (referral_id, kind, payload, state, next_attempt_at, created_at, updated_at)
                     VALUES ('r', 'patch_referral', '{}', 'done', 'x', 'x', 'x')",
                    [],
                )
                .unwrap();
            }
            tx.execute("DELETE FROM outbox WHERE id = 3", []).unwrap();
            tx.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let id: i64 = store
            .call_blocking(|c| {
                c.execute(
                    "INSERT INTO outbox (referral_id, kind, target, payload, state, next_attempt_at, created_at, updated_at)
                     VALUES ('r', 'adopt_link', 'partners/1/leads/2', '{}', 'pending', 'x', 'x', 'x')",
                    [],
                )?;
                Ok(c.last_insert_rowid())
            })
            .unwrap();
        assert_eq!(id, 4, "id 3 was used once and is never handed out again");
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
