//! `cosell-sync sim`: the simulator as a process of its own, which an installed service can be
//! pointed at (the rehearsal `docs/operations.md` and the real-systemd test use), and the demo
//! with a small inbox.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::BIN;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn run(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_install_rehearses_against_the_standalone_simulator_with_its_printed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut sim = tokio::process::Command::new(BIN)
        .args(["sim", "--referrals", "12", "--listen", &listen])
        .arg("--credentials-dir")
        .arg(&credentials)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    while let Some(line) =
        tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("the simulator prints its keys")
            .unwrap()
    {
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("credentials_file") {
            break;
        }
    }
    assert!(
        printed.contains(&format!("api_base = \"http://{listen}\"")),
        "{printed}"
    );
    // AWS Partner Central is another host: its simulator on a port of its own, its keys too.
    assert!(
        printed.contains("\n[aws]\nendpoint = \"http://127.0.0.1:"),
        "{printed}"
    );
    assert!(
        printed.contains("access_key_id = \"AKIDSIMULATORAWS01\"\nsecret_access_key_file = \"aws-secret-access-key\"\n"),
        "{printed}"
    );
    for secret in [
        "microsoft-client-secret",
        "google-key.json",
        "aws-secret-access-key",
    ] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(credentials.join(secret))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }

    // The printed keys, as an operator pastes them, plus what the sim cannot know.
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\npath = \"{}\"\n\n{printed}\n[google.lead]\nsubmitter_email = \"cosell@partner.example\"\nproduct_family = \"GOOGLE_CLOUD_PLATFORM\"\n",
            dir.path().join("state.db").display()
        ),
    )
    .unwrap();
    let out = run(&config, &["auth", "microsoft"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&config, &["sync"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&config, &["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status.to_string().contains("5a3e"), "{status}");
    // The sample AWS invitations came in through the printed [aws] keys (signed with the
    // secret from the written file).
    assert!(
        status.to_string().contains("engi-sim0000000001"),
        "{status}"
    );

    // SIGTERM ends it cleanly.
    crate::daemon::kill(&sim, "-TERM");
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), sim.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_works_with_an_inbox_of_ten_or_fewer() {
    for n in ["1", "10"] {
        let out = tokio::process::Command::new(BIN)
            .args(["demo", "--referrals", n])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "demo --referrals {n}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
