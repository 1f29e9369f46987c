//! Issue 30 items 2 and 6: every file the configuration names is read through one bounded
//! reader (a device, a FIFO or an oversized file is refused in under a second, naming the
//! key, exit 78); a secret or key file readable by other users is named by `check-config` and
//! `run`; a regenerated link key raises one alert saying the earlier links stopped working.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{stderr, TestEnv};

fn mkfifo(path: &Path) -> PathBuf {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
    path.to_path_buf()
}

const ACTIONS: &str =
    "\n[actions]\nlisten = \"127.0.0.1:9\"\npublic_url = \"https://sync.example.com/act\"\n";

/// `check-config` through the binary, killed after 10 s: a read that blocks fails the test.
async fn check_config(env: &TestEnv) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cosell-sync"))
            .arg("--config")
            .arg(&env.config)
            .arg("check-config")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("check-config did not finish in 10 s")
    .unwrap();
    (out.status.code(), stderr(&out), started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_fifos_and_oversized_files_are_refused_in_under_a_second_naming_the_key() {
    type Setup = fn(&TestEnv, &str) -> String;
    let cases: [(&str, Setup); 6] = [
        ("actions.key_file", |_, text| {
            format!("{text}{ACTIONS}key_file = \"/dev/zero\"\n")
        }),
        ("microsoft.client_secret_file", |env, text| {
            let fifo = mkfifo(&env.dir.path().join("secret.fifo"));
            let line = text
                .lines()
                .find(|l| l.starts_with("client_secret ="))
                .unwrap();
            text.replace(
                line,
                &format!("client_secret_file = \"{}\"", fifo.display()),
            )
        }),
        ("microsoft.refresh_token_file", |_, text| {
            let line = text
                .lines()
                .find(|l| l.starts_with("refresh_token ="))
                .unwrap();
            text.replace(line, "refresh_token_file = \"/dev/zero\"")
        }),
        ("google.credentials_file", |env, text| {
            let fifo = mkfifo(&env.dir.path().join("key.fifo"));
            let key = env.dir.path().join("google-key.json");
            text.replace(&key.display().to_string(), &fifo.display().to_string())
        }),
        ("webhook.ca_file", |_, text| {
            format!("{text}\n[webhook]\nlisten = \"127.0.0.1:9\"\npublic_url = \"https://sync.example.com/events\"\nca_file = \"/dev/zero\"\n")
        }),
        ("config", |_, text| {
            format!("{text}\n{}", "# padding\n".repeat(200_000))
        }),
    ];
    for (key, setup) in cases {
        let env = TestEnv::with_google("").await;
        env.edit_config(|text| setup(&env, &text));
        let (code, err, took) = check_config(&env).await;
        assert_eq!(code, Some(78), "{key}: {err}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(took < Duration::from_secs(1), "{key}: {took:?}");
        println!("{key}: exit 78 in {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_file_readable_by_others_is_named_by_check_config() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new().await;
    let key = env.dir.path().join("links.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef-test-key").unwrap();
    env.edit_config(|t| format!("{t}{ACTIONS}key_file = \"{}\"\n", key.display()));
    for (mode, warned) in [(0o644, true), (0o640, true), (0o600, false)] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, err, _) = check_config(&env).await;
        assert_eq!(code, Some(0), "{err}");
        let said = err.contains("actions.key_file") && err.contains("readable by other users");
        assert_eq!(said, warned, "mode {mode:o}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_regenerated_link_key_raises_one_alert_that_earlier_links_stopped_working() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let hook = format!(
        "\n[[alerts.webhook]]\nurl = \"{}/hook\"\nformat = \"json\"\n",
        server.uri()
    );
    let env = TestEnv::with_extra(&format!("{hook}{ACTIONS}")).await;
    let kinds = || async {
        let mut kinds = Vec::new();
        for r in server.received_requests().await.unwrap_or_default() {
            let alert: Value = serde_json::from_slice(&r.body).unwrap();
            if alert["kind"] == "link_key_changed" {
                kinds.push(alert["message"].as_str().unwrap().to_string());
            }
        }
        kinds
    };
    assert!(env.run(&["sync"]).await.status.success());
    assert!(env.run(&["sync"]).await.status.success());
    assert!(kinds().await.is_empty(), "the first key is no change");
    // Deleted by mistake: the next start makes a new one, and says what that means.
    std::fs::remove_file(env.dir.path().join("actions.key")).unwrap();
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(env.run(&["sync"]).await.status.success());
    let said = kinds().await;
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("stopped working"), "{}", said[0]);
}
