//! Lose the database, keep the leads (issue 15): a lost, restored or deleted database re-links
//! every referral from Partner Center's externalReferenceId and never makes a second lead;
//! the store notices its file is gone; a backup is consistent while `run` writes.

use std::collections::BTreeMap;
use std::path::Path;

use cosell_sync::sim::sample;
use serde_json::Value;

use crate::helpers::{stderr, stdout, TestEnv};

async fn sync_ok(env: &TestEnv) {
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "sync failed: {}", stderr(&out));
}

/// Every referral the simulator holds has exactly one lead, and Partner Center names it.
fn one_lead_each(env: &TestEnv, ids: &[String]) {
    let per_id = env.sim.leads_per_external_id();
    let dupes: BTreeMap<_, _> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "duplicate leads: {dupes:?}");
    for id in ids {
        assert_eq!(per_id.get(id), Some(&1), "no lead for {id}");
    }
    let leads = env.sim.google_leads();
    for id in ids {
        let lead = leads.iter().find(|l| l["externalSystemId"] == *id).unwrap();
        assert_eq!(
            env.sim.referral(id).unwrap()["externalReferenceId"],
            lead["name"],
            "Partner Center still names the first lead of {id}"
        );
    }
}

/// Every referral is linked in the database to the lead Partner Center names.
fn every_link_recovered(env: &TestEnv, ids: &[String]) {
    let conn = rusqlite::Connection::open(env.state_db()).unwrap();
    for id in ids {
        let linked: Option<String> = conn
            .query_row(
                "SELECT lead_name FROM links WHERE referral_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap_or(None);
        let named = env.sim.referral(id).unwrap()["externalReferenceId"].clone();
        assert_eq!(linked.map(Value::from), Some(named), "link of {id}");
    }
}

/// Replaces the database with `copy` (and no WAL: a restore is the file alone).
pub(crate) fn restore(db: &Path, copy: &Path) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::copy(copy, db).unwrap();
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(sample::referral_id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_database_relinks_every_lead_and_creates_none() {
    let env = TestEnv::with_google("").await;
    let now = chrono::Utc::now();
    env.sim.put_referrals(sample::pending_inbox(12, now));
    sync_ok(&env).await;
    let creates = env.sim.counter("google.create_lead");
    assert_eq!(creates, 12);

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.state_db().display()));
    }
    sync_ok(&env).await;
    sync_ok(&env).await;
    assert_eq!(
        env.sim.counter("google.create_lead"),
        creates,
        "no create after the loss"
    );
    assert_eq!(env.sim.counter("patch"), 12, "no write-back overwritten");
    one_lead_each(&env, &ids(0..12));
    every_link_recovered(&env, &ids(0..12));
    let adopted: i64 = env.query(
        "SELECT COUNT(*) FROM outbox WHERE kind = 'adopt_link' AND state = 'done'",
        |r| r.get(0),
    );
    assert_eq!(adopted, 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_week_old_copy_restored_relinks_and_a_stale_create_is_never_sent() {
    // Small pages: the referral whose create the old copy still holds comes late in the pull,
    // after the first page's new referrals have already triggered a push.
    let env = TestEnv::with_google("").await;
    env.edit_config(|t| {
        t.replace(
            "requests_per_second = 200",
            "requests_per_second = 200\npage_size = 3",
        )
    });
    let now = chrono::Utc::now();
    let week = chrono::Duration::days(7);
    // Batch one, and referral 99 still Received (not forwarded yet) when the copy is taken.
    let mut first = sample::pending_inbox(6, now);
    first.push(sample::referral(
        99,
        now,
        chrono::Duration::days(12),
        "New",
        "Received",
    ));
    env.sim.put_referrals(first);
    sync_ok(&env).await;
    let copy = env.dir.path().join("week-old.db");
    let out = env.run(&["backup", copy.to_str().unwrap()]).await;
    assert!(out.status.success(), "backup: {}", stderr(&out));

    // The week after the copy: 99 becomes Pending and gets its lead; six more arrive.
    let late = sample::referral_id(99);
    env.sim
        .edit_referral(&late, |r| r["substatus"] = "Pending".into());
    env.sim
        .put_referrals((6..12).map(|i| {
            sample::referral(i, now, chrono::Duration::hours(i as i64), "New", "Pending")
        }));
    sync_ok(&env).await;
    let all: Vec<String> = ids(0..12).into_iter().chain([late.clone()]).collect();
    one_lead_each(&env, &all);
    let creates = env.sim.counter("google.create_lead");
    assert_eq!(creates, 13);

    // Restore the copy, as if it held a create for 99 that was still waiting for a retry.
    restore(&env.state_db(), &copy);
    let lead =
        serde_json::json!({"v": 1, "action": "create_lead", "lead": {"externalSystemId": late}});
    let conn = rusqlite::Connection::open(env.state_db()).unwrap();
    let past = cosell_sync::microsoft::model::db_timestamp(now - week);
    conn.execute(
        "INSERT INTO outbox (referral_id, kind, payload, state, next_attempt_at, created_at, updated_at)
         VALUES (?1, 'create_lead', ?2, 'pending', ?3, ?3, ?3)",
        rusqlite::params![late, lead.to_string(), past],
    )
    .unwrap();
    drop(conn);
    sync_ok(&env).await;
    sync_ok(&env).await;

    assert_eq!(
        env.sim.counter("google.create_lead"),
        creates,
        "not one create after the restore"
    );
    assert_eq!(env.sim.counter("patch"), 13, "no write-back overwritten");
    one_lead_each(&env, &all);
    every_link_recovered(&env, &all);
    let stale: String = env.query(
        &format!("SELECT state FROM outbox WHERE referral_id = '{late}' AND kind = 'create_lead'"),
        |r| r.get(0),
    );
    assert_eq!(stale, "superseded", "the stale create was stopped");
}

async fn wait_until(within: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    done()
}

/// How many links the database holds (0 while it is missing or locked).
fn links(db: &Path) -> i64 {
    if !db.exists() {
        return 0;
    }
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM links", [], |r| r.get(0)))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_deleted_under_run_stops_it_and_the_restart_relinks_without_a_create() {
    use crate::daemon::spawn_run;
    let env = TestEnv::with_google("\n[schedule]\nsync = \"*/1 * * * * *\"\n").await;
    let n = 15;
    env.sim
        .put_referrals(sample::pending_inbox(n, chrono::Utc::now()));
    let notify = env.dir.path().join("no-notify.sock");
    let log = env.dir.path().join("run1.log");
    let mut child = spawn_run(&env, &notify, &log);
    assert!(
        wait_until(std::time::Duration::from_secs(30), || env
            .sim
            .counter("patch")
            == n as u64)
        .await,
        "leads and write-backs: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let creates = env.sim.counter("google.create_lead");
    assert_eq!(creates, n as u64);

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.state_db().display()));
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("the daemon stops when its database file is gone")
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        status.code(),
        Some(cosell_sync::exit::STORE_REPLACED),
        "{text}"
    );
    assert!(
        text.contains("was deleted while this process had it open"),
        "{text}"
    );

    // systemd restarts it: a new database, every link recovered from Partner Center.
    let log2 = env.dir.path().join("run2.log");
    let _child = spawn_run(&env, &notify, &log2);
    let db = env.state_db();
    assert!(
        wait_until(std::time::Duration::from_secs(30), || links(&db)
            == n as i64)
        .await,
        "links recovered: {}",
        std::fs::read_to_string(&log2).unwrap_or_default()
    );
    assert_eq!(env.sim.counter("google.create_lead"), creates, "no create");
    assert_eq!(
        env.sim.counter("patch"),
        n as u64,
        "no write-back overwritten"
    );
    let ids: Vec<String> = ids(0..n);
    one_lead_each(&env, &ids);
    every_link_recovered(&env, &ids);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_worker_through_a_symlink_is_refused() {
    use crate::daemon::spawn_run;
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::pending_inbox(2, chrono::Utc::now()));
    let notify = env.dir.path().join("no-notify.sock");
    let log = env.dir.path().join("run.log");
    let _child = spawn_run(&env, &notify, &log);
    let db = env.state_db();
    assert!(
        wait_until(std::time::Duration::from_secs(20), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("cycle finished")
        })
        .await,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let other = env.dir.path().join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    let link = other.join("state.db");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let out = tokio::process::Command::new(crate::helpers::BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("sync")
        .env("COSELL_STATE__PATH", &link)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another cosell-sync process"), "{err}");
}

/// Makes every write of the token file fail, also as root (where modes do not stop a
/// write): a directory sits where the atomic write puts its temporary file. Returns it.
fn block_token_writes(token_file: &Path) -> std::path::PathBuf {
    let name = token_file.file_name().unwrap().to_string_lossy();
    let tmp = token_file.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::create_dir_all(tmp.join("in-the-way")).unwrap();
    tmp
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_token_that_cannot_be_written_is_kept_used_and_written_later() {
    let env = TestEnv::new().await;
    let token_file = env.dir.path().join("microsoft-refresh-token");
    let blocker = block_token_writes(&token_file);
    let client = env.client(&token_file);
    client
        .check_auth()
        .await
        .expect("the grant itself succeeds");
    let unsaved = client
        .tokens()
        .unsaved()
        .expect("the rotated token is held");
    assert!(unsaved.error.contains("cannot write"), "{unsaved:?}");
    // The configured token was rotated away: only the one in memory still works.
    client.tokens().invalidate().await;
    client
        .check_auth()
        .await
        .expect("the next grant uses the token held in memory");
    assert_eq!(env.sim.counter("token"), 2);

    // Space again: the next use writes it, and a new process signs in from the file.
    std::fs::remove_dir_all(&blocker).unwrap();
    client.check_auth().await.unwrap();
    assert!(client.tokens().unsaved().is_none());
    let restarted = env.client(&token_file);
    restarted
        .check_auth()
        .await
        .expect("the sign-in survived: the file holds the live token");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_token_file_raises_token_unsaved_and_the_sync_goes_on() {
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::pending_inbox(2, chrono::Utc::now()));
    block_token_writes(&env.dir.path().join("microsoft-refresh-token"));
    sync_ok(&env).await;
    let (kind, message): (String, String) = env.query(
        "SELECT kind, payload FROM alerts WHERE kind = 'token_unsaved'",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(kind, "token_unsaved");
    assert!(message.contains("auth microsoft"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_with_the_same_microsoft_settings_makes_no_grant() {
    use crate::daemon::{kill, spawn_run};
    let env = TestEnv::with_extra("\n[schedule]\nsync = \"*/1 * * * * *\"\n").await;
    env.sim
        .put_referrals(sample::pending_inbox(2, chrono::Utc::now()));
    let notify = env.dir.path().join("no-notify.sock");
    let log = env.dir.path().join("run.log");
    let child = spawn_run(&env, &notify, &log);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(std::time::Duration::from_secs(20), || text()
            .contains("cycle finished"))
        .await,
        "{}",
        text()
    );
    let grants = env.sim.counter("token");
    for n in 1..=3 {
        kill(&child, "-HUP");
        assert!(
            wait_until(std::time::Duration::from_secs(10), || {
                text().matches("configuration reloaded").count() == n
            })
            .await,
            "{}",
            text()
        );
    }
    // Each reload wakes a tick: the ticks after them still sign in with the kept source.
    let cycles = text().matches("cycle finished").count();
    assert!(
        wait_until(std::time::Duration::from_secs(10), || {
            text().matches("cycle finished").count() > cycles
        })
        .await,
        "{}",
        text()
    );
    assert_eq!(
        env.sim.counter("token"),
        grants,
        "a SIGHUP alone costs no grant"
    );
}

/// Database bytes per referral and per tick at steady state (docs/benchmarks.md):
/// `cargo test --test it recovery::db_bytes -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check"]
async fn db_bytes_per_referral_and_per_tick() {
    let env = TestEnv::with_google("").await;
    let n = 500;
    env.sim
        .put_referrals(sample::pending_inbox(n, chrono::Utc::now()));
    let size = |env: &TestEnv| {
        let c = rusqlite::Connection::open(env.state_db()).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        let (pages, free, size): (i64, i64, i64) = c
            .query_row(
                "SELECT (SELECT page_count FROM pragma_page_count), (SELECT freelist_count FROM pragma_freelist_count), (SELECT page_size FROM pragma_page_size)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        (pages - free) * size
    };
    let empty = {
        let out = env.run(&["sync"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        size(&env)
    };
    let ticks = 50;
    for _ in 0..ticks {
        sync_ok(&env).await;
    }
    let after = size(&env);
    let per_tick = (after - empty) as f64 / ticks as f64;
    println!(
        "referrals={n} bytes_after_first_sync={empty} bytes_per_referral={:.0} bytes_per_idle_tick={per_tick:.0} bytes_per_day_at_5min_ticks={:.0}",
        empty as f64 / n as f64,
        per_tick * 288.0
    );
}

/// Issue 30 item 3, through the command: `backup` of the live database's own files is a usage
/// error (exit 2) that touches nothing; `backup DIR` writes `DIR/state-<time>.db`; no partial
/// copy is left anywhere.
#[tokio::test(flavor = "multi_thread")]
async fn backup_refuses_the_live_files_and_writes_into_a_directory() {
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::pending_inbox(5, chrono::Utc::now()));
    sync_ok(&env).await;
    let db = env.state_db();
    let before = std::fs::read(&db).unwrap();
    for live in ["", "-wal", "-shm"] {
        let path = format!("{}{live}", db.display());
        let out = env.cli(&["backup", &path]).await;
        assert_eq!(out.status.code(), Some(2), "{path}: {}", stderr(&out));
        assert!(stderr(&out).contains("live database"), "{}", stderr(&out));
    }
    let dotted = env.dir.path().join(".").join("state.db");
    assert_eq!(
        env.cli(&["backup", dotted.to_str().unwrap()])
            .await
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the live database was touched"
    );
    let dir = env.dir.path().join("backups");
    std::fs::create_dir(&dir).unwrap();
    let out = env.cli(&["backup", dir.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(
        written[0].starts_with("state-") && written[0].ends_with(".db"),
        "{written:?}"
    );
    assert!(stdout(&out).contains(&written[0]), "{}", stdout(&out));
    let partial = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial")
        })
        .count();
    assert_eq!(partial, 0);
}

/// Issue 28, item 3: `restore` installs a backup at `[state] path` the way the service needs
/// it (the state directory's owner, 0600, no stale WAL), refuses while `run` holds the
/// worker lock, and the restored database syncs.
#[tokio::test(flavor = "multi_thread")]
async fn restore_installs_a_backup_with_the_directorys_owner_and_refuses_while_running() {
    use std::os::unix::fs::MetadataExt;
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::pending_inbox(3, chrono::Utc::now()));
    sync_ok(&env).await;
    let backup = env.dir.path().join("backup.db");
    let out = env.run(&["backup", backup.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // The database is deleted (a new host); its stale WAL is left behind.
    let db = env.state_db();
    std::fs::remove_file(&db).unwrap();
    std::fs::write(db.with_file_name("state.db-wal"), b"stale").unwrap();
    let out = env.run(&["restore", backup.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = out.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        text.contains("3 referrals") && text.contains("mode 0600"),
        "{text}"
    );
    let (meta, dir) = (
        std::fs::metadata(&db).unwrap(),
        std::fs::metadata(env.dir.path()).unwrap(),
    );
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (dir.uid(), dir.gid()));
    assert!(!db.with_file_name("state.db-wal").exists());
    sync_ok(&env).await;

    // While `run` holds the worker lock: refused, nothing replaced.
    let (_socket, child, _log) = crate::daemon::start_run(&env);
    let lock = db.with_extension("lock");
    assert!(
        crate::helpers::wait_until(std::time::Duration::from_secs(20), || {
            std::fs::File::open(&lock).is_ok_and(|f| f.try_lock().is_err())
        })
        .await,
        "run never took the lock"
    );
    let before = std::fs::metadata(&db).unwrap().ino();
    let out = env.run(&["restore", backup.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("stop the daemon first"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::metadata(&db).unwrap().ino(), before);
    crate::daemon::kill(&child, "-TERM");
}

/// Issue 28, item 3: a database the process cannot write (a root `cp` under a service user)
/// fails naming its owner and the fix, not SQLite's "unable to open database file". Needs
/// root to run the binary as another user; skipped otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_the_service_cannot_write_names_its_owner_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid(2) has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run the binary as another user");
        return;
    }
    let env = TestEnv::new().await;
    sync_ok(&env).await;
    let db = env.state_db();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tokio::process::Command::new(crate::helpers::BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("sync")
        .uid(65534)
        .gid(65534)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let words = err.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("is owned by uid 0"), "{err}");
    assert!(words.contains("cosell-sync restore"), "{err}");
    assert!(words.contains("chown --reference="), "{err}");
}
