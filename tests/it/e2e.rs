//! The binary end to end against the simulator: `sync`, `status`, `run` and SIGTERM, token
//! rotation across processes, exit codes.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cosell_sync::sim::{sample, Faults};
use serde_json::Value;

use crate::helpers::{stderr, stdout, TestEnv, BIN};

fn referral_fingerprint(env: &TestEnv) -> (i64, String) {
    env.query(
        "SELECT COUNT(*), COALESCE(group_concat(id || raw_json || last_changed_at, '|'), '') FROM
            (SELECT * FROM referrals ORDER BY id)",
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_imports_a_250_referral_inbox_in_one_cycle_and_a_second_sync_changes_nothing() {
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::pending_inbox(250, chrono::Utc::now()));

    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("250 new"), "{}", stdout(&out));
    let (count, before) = referral_fingerprint(&env);
    assert_eq!(count, 250);

    let again = env.run(&["sync"]).await;
    assert!(again.status.success(), "stderr: {}", stderr(&again));
    assert!(
        stdout(&again).contains("0 new, 0 changed"),
        "{}",
        stdout(&again)
    );
    let (_, after) = referral_fingerprint(&env);
    assert_eq!(before, after, "a second sync must not touch any row");

    let outcomes: i64 = env.query(
        "SELECT COUNT(*) FROM cycle_runs WHERE outcome = 'ok'",
        |r| r.get(0),
    );
    assert_eq!(outcomes, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_lists_referrals_nearest_expiry_first() {
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::demo_set(30, chrono::Utc::now()));
    assert!(env.run(&["sync"]).await.status.success());

    let out = env.run(&["status", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let awaiting = report["awaiting_response"].as_array().unwrap();
    // 30 Pending (one past its deadline) and one Received.
    assert_eq!(awaiting.len(), 31);
    let deadlines: Vec<&str> = awaiting
        .iter()
        .map(|e| e["deadline"].as_str().unwrap())
        .collect();
    let mut sorted = deadlines.clone();
    sorted.sort();
    assert_eq!(deadlines, sorted, "nearest deadline first");
    assert_eq!(
        awaiting[0]["id"],
        sample::referral_id(3),
        "the expired one leads"
    );
    assert_eq!(awaiting[1]["id"], sample::referral_id(2));
    assert_eq!(awaiting[1]["threshold"], "4h");
    assert_eq!(awaiting[2]["threshold"], "24h");

    let text = env.run(&["status"]).await;
    let text = stdout(&text);
    let first_line = text
        .lines()
        .find(|l| l.contains("EXPIRED"))
        .expect("an expired row");
    assert!(first_line.contains(&sample::referral_id(3)), "{text}");
    assert!(text.contains("Last cycles:"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rotated_refresh_token_carries_over_to_the_next_process() {
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::pending_inbox(3, chrono::Utc::now()));
    assert!(env.cli(&["sync"]).await.status.success());
    let token_file = env.dir.path().join("microsoft-refresh-token");
    let stored = std::fs::read_to_string(&token_file).unwrap();
    assert_ne!(stored.trim(), env.sim.state.credentials.refresh_token);
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The simulator revoked the configured token at the first grant: a second process only
    // works if it uses the rotated one from the file.
    let second = env.cli(&["sync"]).await;
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(env.sim.counter("token"), 2);
    // The token never reaches the database.
    let db = std::fs::read(env.state_db()).unwrap();
    let rotated = std::fs::read_to_string(&token_file).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(rotated.trim()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_fails_the_cycle_with_a_clear_message() {
    let env = TestEnv::new().await;
    env.sim.revoke_refresh_tokens();
    let out = env.run(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("invalid_grant") && err.contains("auth microsoft"),
        "{err}"
    );
    let failed: i64 = env.query(
        "SELECT COUNT(*) FROM cycle_runs WHERE outcome = 'failed'",
        |r| r.get(0),
    );
    assert_eq!(failed, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_faults_are_ridden_out() {
    // 40% of answers fail; 12 retries make a spent budget (0.4^13) practically impossible.
    let env = TestEnv::with_extra("max_retries = 12\nmax_total = \"60s\"\n").await;
    env.sim
        .put_referrals(sample::pending_inbox(250, chrono::Utc::now()));
    env.sim.set_faults(Faults {
        rate_429: 0.15,
        rate_5xx: 0.15,
        rate_drop: 0.05,
        rate_malformed: 0.05,
        retry_after_secs: 0,
        ..Faults::default()
    });
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let (count, _) = referral_fingerprint(&env);
    assert_eq!(count, 250);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_exits_78_naming_the_key() {
    let env = TestEnv::with_extra("[schedule]\nsync = \"every five minutes\"\n").await;
    let out = env.cli(&["sync"]).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("schedule.sync: invalid cron expression"),
        "{}",
        stderr(&out)
    );

    let out = tokio::process::Command::new(BIN)
        .args(["--config", "/nonexistent/cosell.toml", "check-config"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let out = tokio::process::Command::new(BIN)
        .arg("no-such-command")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_redacts_secrets() {
    let env = TestEnv::new().await;
    let out = env.run(&["check-config"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let creds = &env.sim.state.credentials;
    assert!(!text.contains(&creds.client_secret), "{text}");
    assert!(!text.contains(&creds.refresh_token), "{text}");
    assert!(text.contains("client_secret = \"[redacted]\""), "{text}");
    assert!(text.contains(&creds.tenant));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_run_exits_0_with_the_database_intact() {
    let env = TestEnv::with_extra("[daemon]\nshutdown_grace = \"20s\"\n").await;
    env.sim
        .put_referrals(sample::pending_inbox(250, chrono::Utc::now()));
    // Slow answers, so the signal lands in the middle of the first cycle.
    env.sim.set_faults(Faults {
        delay: Duration::from_millis(150),
        ..Faults::default()
    });
    let mut child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first cycle is under way.
    let started = std::time::Instant::now();
    while env.sim.counter("list") < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the daemon never started a cycle"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(25), child.wait())
        .await
        .expect("the daemon exits within the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let conn = rusqlite::Connection::open(env.state_db()).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    // The cycle in flight was allowed to finish: everything is in, recorded as ok.
    let (n, outcome): (i64, String) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM referrals), outcome FROM cycle_runs ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((n, outcome.as_str()), (250, "ok"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_referral_is_kept_aside_and_the_rest_imported() {
    let env = TestEnv::new().await;
    let mut referrals = sample::pending_inbox(120, chrono::Utc::now());
    referrals[50]["details"] = serde_json::json!({"dealValue": "a lot"});
    env.sim.put_referrals(referrals);
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&sample::referral_id(50)),
        "the log names the bad referral"
    );
    let (count, _) = referral_fingerprint(&env);
    assert_eq!(count, 119);
    let kept: i64 = env.query("SELECT COUNT(*) FROM rejected_records", |r| r.get(0));
    assert_eq!(kept, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_microsoft_runs_the_device_code_flow_and_sync_uses_its_token() {
    let env = TestEnv::new().await;
    env.edit_config(|c| {
        c.lines()
            .filter(|l| !l.starts_with("refresh_token"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let out = env.cli(&["sync"]).await;
    assert_eq!(out.status.code(), Some(78), "no token yet: a config error");
    assert!(stderr(&out).contains("auth microsoft"), "{}", stderr(&out));

    env.sim
        .script_device_flow(&["authorization_pending", "slow_down"]);
    let started = std::time::Instant::now();
    let out = env.cli(&["auth", "microsoft"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("SIMCODE42"), "{}", stdout(&out));
    // 1 s, 1 s, then slow_down makes it 6 s between polls.
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "slow_down honoured: {:?}",
        started.elapsed()
    );
    let token_file = env.dir.path().join("microsoft-refresh-token");
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    env.sim
        .put_referrals(sample::pending_inbox(2, chrono::Utc::now()));
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.cli(&["auth", "check"]).await;
    assert!(
        stdout(&out).contains("ok      microsoft"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_microsoft_reports_an_expired_code() {
    let env = TestEnv::new().await;
    env.sim.script_device_flow(&["expired_token"]);
    let out = env.cli(&["auth", "microsoft"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    env.sim.revoke_refresh_tokens();
    let out = env.cli(&["auth", "check"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAILED  microsoft") && stdout(&out).contains("invalid_grant"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn log_formats_json_and_journald() {
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::pending_inbox(3, chrono::Utc::now()));
    env.edit_config(|c| {
        c.replace(
            "level = \"info\"",
            "level = \"info\"\nformat = \"journald\"",
        )
    });
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.lines().all(|l| l.starts_with('<')), "{log}");
    assert!(log.contains("<6>cycle{cycle_id="), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes for the journal");

    env.edit_config(|c| c.replace("format = \"journald\"", "format = \"json\""));
    let out = env.cli(&["sync"]).await;
    let log = stderr(&out);
    let finished = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("every line is JSON"))
        .find(|v| v["message"] == "cycle finished")
        .expect("a cycle line");
    assert!(finished["span"]["cycle_id"].is_string(), "{finished}");
}
