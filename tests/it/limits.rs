//! Issue 9, findings 2, 6, 7, 8 and 9 through the binary: configuration that can never
//! work exits 78 by key, webhook URLs stay secret, read-only commands never write, the state
//! files are private, and a reload during start-up is not fatal.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cosell_sync::sim::sample;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{stderr, stdout, wait_until, TestEnv};

/// Finding 9: `[google] partner_id` without any product family can never forward.
#[tokio::test(flavor = "multi_thread")]
async fn google_without_product_family_is_a_config_error() {
    let env = TestEnv::with_google("").await;
    env.edit_config(|c| c.replace("product_family = \"GOOGLE_CLOUD_PLATFORM\"\n", ""));
    let out = env.cli(&["check-config"]).await;
    assert_eq!(out.status.code(), Some(78), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("google.lead.product_family"),
        "{}",
        stderr(&out)
    );
}

/// Finding 2: absurd durations are refused by key (exit 78), never a panic.
#[tokio::test(flavor = "multi_thread")]
async fn absurd_durations_are_refused_by_key() {
    for (value, key) in [
        ("\"999999999999999999d\"", "daemon.shutdown_grace"),
        ("\"2000h\"", "daemon.shutdown_grace"),
        ("9223372036854775807", "daemon.shutdown_grace"),
    ] {
        let env = TestEnv::with_extra(&format!("\n[daemon]\nshutdown_grace = {value}\n")).await;
        let out = env.cli(&["check-config"]).await;
        assert_eq!(out.status.code(), Some(78), "{value}: {}", stderr(&out));
        assert!(stderr(&out).contains(key), "{value}: {}", stderr(&out));
    }
}

/// Finding 6: a webhook URL's path is its secret: not in `check-config`, `alerts list`, the
/// delivery records, nor anywhere in the database file.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_urls_are_redacted_everywhere_they_are_shown() {
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    let secret = "T0000/B0000/XXXXsecretXXXX";
    let env = TestEnv::with_extra(&format!(
        "\n[[alerts.webhook]]\nurl = \"{}/services/{secret}\"\nformat = \"slack\"\n",
        hook.uri()
    ))
    .await;
    env.sim
        .put_referrals(sample::demo_set(12, chrono::Utc::now()));
    let check = env.cli(&["check-config"]).await;
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(!stdout(&check).contains(secret), "{}", stdout(&check));
    assert!(stdout(&check).contains("[redacted]"), "{}", stdout(&check));
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains(secret));
    assert!(
        !hook.received_requests().await.unwrap().is_empty(),
        "alerts were delivered"
    );
    let list = env.cli(&["alerts", "list"]).await;
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(stdout(&list).contains("webhook:"), "{}", stdout(&list));
    assert!(!stdout(&list).contains(secret), "{}", stdout(&list));
    drop(rusqlite::Connection::open(env.state_db()).unwrap()); // checkpoint on close
    for file in ["state.db", "state.db-wal"] {
        if let Ok(bytes) = std::fs::read(env.dir.path().join(file)) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(secret), "{file} holds the webhook URL");
        }
    }
}

/// Finding 8: a read-only command at a mistyped path creates nothing and says so.
#[tokio::test(flavor = "multi_thread")]
async fn read_only_commands_never_create_a_database() {
    let env = TestEnv::new().await;
    let typo = env.dir.path().join("typo/state.db");
    env.edit_config(|c| {
        c.replace(
            &env.state_db().display().to_string(),
            &typo.display().to_string(),
        )
    });
    for args in [
        &["status"][..],
        &["outbox", "list"],
        &["alerts", "list"],
        &["audit"],
    ] {
        let out = env.cli(args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains(&format!("no database at {}", typo.display())),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(!env.dir.path().join("typo").exists());
}

/// Finding 8: read-only commands work on a database the user may only read; the database
/// and the lock file are created private (0600).
#[tokio::test(flavor = "multi_thread")]
async fn read_only_commands_read_a_read_only_database_and_state_files_are_private() {
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::demo_set(12, chrono::Utc::now()));
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    for file in ["state.db", "state.lock"] {
        let mode = std::fs::metadata(env.dir.path().join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    std::fs::set_permissions(env.state_db(), std::fs::Permissions::from_mode(0o400)).unwrap();
    for args in [&["status"][..], &["outbox", "list"], &["alerts", "list"]] {
        let out = env.cli(args).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
}

/// Finding 7: a SIGHUP while the daemon waits for its first token is not fatal.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_during_start_up_does_not_kill_the_daemon() {
    let env = TestEnv::new().await;
    // Nothing listens here: the first token keeps failing (transient), so start-up waits.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let sim = env.sim.base_url();
    env.edit_config(|c| {
        c.replace(
            &format!("authority = \"{sim}\""),
            &format!("authority = \"{dead_url}\""),
        )
    });
    let log = env.dir.path().join("daemon.log");
    let mut child = tokio::process::Command::new(crate::helpers::BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logged = |attempt: &str| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .any(|l| l.contains("first token not available yet") && l.contains(attempt))
    };
    // The first try failed: the signal handlers are in place and start-up waits to retry.
    assert!(
        wait_until(Duration::from_secs(20), || logged("attempt=1")).await,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let pid = child.id().unwrap().to_string();
    let signal = |name: &str| {
        assert!(std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-HUP");
    // The next try (a second after the first) is logged only by a daemon still alive.
    assert!(
        wait_until(Duration::from_secs(20), || logged("attempt=2")
            || child.try_wait().is_ok_and(|s| s.is_some()))
        .await
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon died of a SIGHUP during start-up"
    );
    signal("-TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
