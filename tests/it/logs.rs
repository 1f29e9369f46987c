//! Logs as journald, Loki and `jq` read them: a failing `sync` in each `[log] format`, its
//! stderr piped (not a terminal), checked line by line.

use cosell_sync::sim::Faults;

use crate::helpers::{TestEnv, BIN};

/// A `sync` whose cycle fails (every API answer a 5xx, no retries), logging in `format`.
async fn failing_sync(format: &str, extra_env: &[(&str, &str)]) -> (Option<i32>, String) {
    let env = TestEnv::with_extra("max_retries = 0\n").await;
    env.sim.set_faults(Faults {
        rate_5xx: 1.0,
        ..Faults::default()
    });
    let mut command = tokio::process::Command::new(BIN);
    command
        .arg("--config")
        .arg(&env.config)
        .arg("sync")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .env("COSELL_LOG__FORMAT", format);
    for (k, v) in extra_env {
        command.env(k, v);
    }
    let out = command.output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn json_logs_of_a_failing_cycle_are_json_on_every_line() {
    let (code, stderr) = failing_sync("json", &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(lines.len() >= 2, "{stderr}");
    for line in &lines {
        assert!(line["level"].is_string(), "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
    }
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["message"].as_str().unwrap().contains("cycle failed"),
        "{last}"
    );
}

#[tokio::test]
async fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let (code, stderr) = failing_sync("text", &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cycle failed"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "ANSI escapes in a pipe: {stderr:?}"
    );
}

#[tokio::test]
async fn journald_format_without_the_journal_prefixes_every_line() {
    let (code, stderr) = failing_sync("journald", &[]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.is_empty());
    for line in stderr.lines() {
        let priority = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .map(|(p, _)| p);
        assert!(
            matches!(priority, Some("3" | "4" | "6" | "7")),
            "no priority: {line:?}"
        );
    }
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("<3>") && last.contains("cycle failed"),
        "{last}"
    );
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

/// `journalctl -u cosell-sync -p err` shows MESSAGE only: the cause must be in it, not only
/// in the `ERROR=` field.
#[tokio::test]
async fn a_failed_cycles_message_carries_its_cause() {
    let (_, stderr) = failing_sync("json", &[]).await;
    let cycle = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["error"].is_string()
                && l["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("cycle failed")
        })
        .unwrap_or_else(|| panic!("no cycle failed event: {stderr}"));
    assert_eq!(
        cycle["message"].as_str().unwrap(),
        format!("cycle failed: {}", cycle["error"].as_str().unwrap()),
        "{cycle}"
    );
    let retry = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("transient error")
        });
    if let Some(retry) = retry {
        assert!(
            retry["message"]
                .as_str()
                .unwrap()
                .contains(retry["error"].as_str().unwrap()),
            "{retry}"
        );
    }
}

/// `[log] format = "journald"` in the service's config, a command run by a person at a
/// terminal: plain lines, no `<3>` prefixes.
#[tokio::test]
async fn journald_format_at_a_terminal_prints_no_priority_prefixes() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no `script` to give the command a terminal");
        return;
    }
    let env = TestEnv::new().await;
    env.edit_config(|c| {
        c.replace(
            "level = \"info\"",
            "level = \"info\"\nformat = \"journald\"",
        )
    });
    let command = format!(
        "{BIN} --config {} status --referral no-such-referral",
        env.config.display()
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("JOURNAL_STREAM")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cosell-sync:"), "{text}");
    assert!(!text.contains("<3>") && !text.contains("<6>"), "{text}");
}

/// Issue 28, item 7: the default `text` format under systemd (stderr is the journal, as
/// `JOURNAL_STREAM` says) carries priorities, so `journalctl -p warning` finds warnings and
/// errors, and one timestamp per line (the journal's).
#[tokio::test]
async fn text_logs_into_the_journal_carry_priorities_and_no_timestamp_of_their_own() {
    use std::os::unix::fs::MetadataExt;
    let env = TestEnv::with_extra("max_retries = 0\n").await;
    env.sim.set_faults(Faults {
        rate_5xx: 1.0,
        ..Faults::default()
    });
    // The journal's stream, as a file: JOURNAL_STREAM names its device and inode.
    let path = env.dir.path().join("journal-stream");
    let file = std::fs::File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let out = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("sync")
        .env_remove("RUST_LOG")
        .env("COSELL_LOG__FORMAT", "text")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(file))
        .status()
        .await
        .unwrap();
    assert_eq!(out.code(), Some(1));
    let log = std::fs::read_to_string(&path).unwrap();
    let mut priorities = std::collections::BTreeSet::new();
    for line in log.lines() {
        let (priority, rest) = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .unwrap_or_else(|| panic!("no priority: {line:?}\n{log}"));
        priorities.insert(priority.to_string());
        assert!(
            !rest.starts_with(|c: char| c.is_ascii_digit()) && !rest.contains("  INFO "),
            "a timestamp or level of its own: {line:?}"
        );
    }
    assert!(priorities.contains("3"), "no error priority: {log}");
    assert!(priorities.contains("6"), "no info priority: {log}");
    let last = log.lines().last().unwrap();
    assert!(
        last.starts_with("<3>") && last.contains("cycle failed"),
        "{last}"
    );
}
