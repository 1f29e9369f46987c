//! Commands that promise safety keep it (issue 10.5) and show one time format (10.7):
//! usage errors exit 2, `auth check` leaves the database alone, a risky retry needs `--force`.

use cosell_sync::sim::{sample, Fault};

use crate::helpers::{stderr, stdout, TestEnv};

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_is_a_usage_error_where_it_would_mean_nothing() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::pending_inbox(1, chrono::Utc::now()));
    assert!(env.run(&["sync"]).await.status.success());
    let before: i64 = env.query("SELECT COUNT(*) FROM outbox WHERE state = 'done'", |r| {
        r.get(0)
    });
    // The binary itself: clap's usage error, before any config or database is touched.
    let out = env.cli(&["--dry-run", "outbox", "drop", "1"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--dry-run applies only to `run` and `sync`"));
    for args in [
        &["--dry-run", "status"][..],
        &["--dry-run", "outbox", "retry", "1"],
        &["outbox", "drop", "1", "--dry-run"],
    ] {
        assert_eq!(env.run(args).await.status.code(), Some(2), "{args:?}");
    }
    let after: i64 = env.query("SELECT COUNT(*) FROM outbox WHERE state = 'done'", |r| {
        r.get(0)
    });
    assert_eq!(before, after, "nothing was dropped");
    // Where it means something, both spellings work.
    assert!(env.run(&["sync", "--dry-run"]).await.status.success());
    assert!(env.run(&["--dry-run", "sync"]).await.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bogus_state_or_resource_name_is_a_usage_error() {
    let env = TestEnv::with_google("").await;
    let out = env.run(&["outbox", "list", "--state", "bogus"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("quarantined"),
        "lists the valid states"
    );
    // A read-only command needs a database to exist (issue 9, finding 8).
    assert!(env.run(&["sync"]).await.status.success());
    let out = env.run(&["outbox", "list", "--state", "in_flight"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    for bad in [
        "opportunities/1",
        "partners//leads/1",
        "partners/1/leads/",
        "x",
    ] {
        let out = env.run(&["link", &sample::referral_id(0), bad]).await;
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("not a Google resource name"),
            "{}",
            stderr(&out)
        );
    }
    let out = env.run(&["audit", "--since", "yesterday-ish"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_check_creates_no_database_and_reports_the_rotated_token() {
    let env = TestEnv::new().await;
    let out = env.cli(&["auth", "check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !env.state_db().exists(),
        "auth check must not create or migrate the database"
    );
    let token_file = env.dir.path().join("microsoft-refresh-token");
    let text = stdout(&out);
    assert!(
        text.contains("rotated the refresh token")
            && text.contains(&token_file.display().to_string()),
        "{text}"
    );
    // The kept token is the valid one: the configured one was retired by the grant.
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_client_secret_points_at_the_secret_not_at_sign_in() {
    let env = TestEnv::new().await;
    env.edit_config(|c| c.replace("sim-client-secret", "wrong-secret"));
    let out = env.run(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("AADSTS7000215"), "{err}");
    assert!(err.contains("microsoft.client_secret"), "{err}");
    assert!(!err.contains("auth microsoft"), "{err}");
    let alert: String = env.query(
        "SELECT payload FROM alerts WHERE kind = 'sync_unhealthy'",
        |r| r.get(0),
    );
    assert!(alert.contains("microsoft.client_secret"), "{alert}");
    assert!(!alert.contains("auth microsoft"), "{alert}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_fails_78_when_the_google_key_file_is_missing() {
    let env = TestEnv::with_google("").await;
    assert!(env.run(&["check-config"]).await.status.success());
    std::fs::remove_file(env.dir.path().join("google-key.json")).unwrap();
    let out = env.run(&["check-config"]).await;
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("google.credentials_file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.run(&["sync"]).await.status.code(), Some(78), "as sync");
}

#[tokio::test(flavor = "multi_thread")]
async fn retrying_a_quarantined_create_needs_force() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::pending_inbox(1, chrono::Utc::now()));
    // As in google.rs: the inbox page, then the create — cut after Google made it.
    env.sim.script_faults([Fault::Pass, Fault::Drop]);
    assert!(env.run(&["sync"]).await.status.success());
    let id: i64 = env.query(
        "SELECT id FROM outbox WHERE state = 'quarantined' AND kind = 'create_lead'",
        |r| r.get(0),
    );
    let out = env.run(&["outbox", "retry", &id.to_string()]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("second lead") && err.contains("--force") && err.contains("link"),
        "{err}"
    );
    let state: String = env.query(&format!("SELECT state FROM outbox WHERE id = {id}"), |r| {
        r.get(0)
    });
    assert_eq!(state, "quarantined", "refused means unchanged");
    let out = env
        .run(&["outbox", "retry", &id.to_string(), "--force"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let state: String = env.query(&format!("SELECT state FROM outbox WHERE id = {id}"), |r| {
        r.get(0)
    });
    assert_eq!(state, "pending");
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_use_one_time_format_and_rfc3339_in_json() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::demo_set(12, chrono::Utc::now()));
    assert!(env.run(&["sync"]).await.status.success());
    let human = regex_like_time;
    for args in [&["audit"][..], &["status"], &["alerts", "list"]] {
        let text = stdout(&env.run(args).await);
        assert!(human(&text), "{args:?}: {text}");
        assert!(
            !text.contains("T0") && !text.contains("T1") && !text.contains("T2"),
            "{args:?}: no RFC 3339 for people: {text}"
        );
    }
    let audit: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["audit", "--json"]).await)).unwrap();
    let at = audit[0]["at"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
    let outbox = stdout(&env.run(&["outbox", "list"]).await);
    assert!(outbox.contains("NEXT ATTEMPT"), "{outbox}");
}

/// Whether the text holds a time as people see it: `2026-12-01 14:05 UTC`.
fn regex_like_time(text: &str) -> bool {
    text.split(" UTC").any(|before| {
        let b = before.as_bytes();
        b.len() >= 16 && {
            let t = &before[before.len() - 16..];
            let c: Vec<char> = t.chars().collect();
            c.len() == 16
                && c[4] == '-'
                && c[7] == '-'
                && c[10] == ' '
                && c[13] == ':'
                && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15]
                    .iter()
                    .all(|i| c[*i].is_ascii_digit())
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn status_referral_shows_one_referrals_timeline_lead_and_alerts() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::demo_set(12, chrono::Utc::now()));
    assert!(env.run(&["sync"]).await.status.success());
    // Referral 2 is 3 hours from its deadline: it has a lead and a 4h alert.
    let id = sample::referral_id(2);
    let out = env.run(&["status", "--referral", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lead = env.sim.referral(&id).unwrap()["externalReferenceId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains(&format!("Referral {id}")), "{text}");
    assert!(text.contains(&lead), "the lead: {text}");
    assert!(
        text.contains("leads.create"),
        "the create in the timeline: {text}"
    );
    assert!(text.contains("referral_expiring"), "its alert: {text}");
    assert!(text.contains("deadline:"), "{text}");

    let json: serde_json::Value = serde_json::from_str(&stdout(
        &env.run(&["status", "--referral", &id, "--json"]).await,
    ))
    .unwrap();
    assert_eq!(json["referral"]["id"], id.as_str());
    assert_eq!(json["link"]["lead_name"], lead.as_str());
    assert!(json["timeline"].as_array().unwrap().len() >= 2, "{json}");
    assert!(json["alerts"][0]["command"]
        .as_str()
        .unwrap()
        .ends_with(&format!("status --referral {id}")));

    let out = env.run(&["status", "--referral", "no-such-referral"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not in the database"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_tells_its_story_without_log_lines_and_says_when_it_cuts() {
    let out = tokio::process::Command::new(crate::helpers::BIN)
        .args(["demo", "--referrals", "60"])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains(" WARN ") && !text.contains(" INFO "),
        "{text}"
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let line = text
        .lines()
        .find(|l| l.starts_with("Alerts raised ("))
        .expect("an alerts line");
    let (shown, total) = line["Alerts raised (".len()..]
        .split_once(" of ")
        .map(|(a, b)| (a.to_string(), b.split(' ').next().unwrap().to_string()))
        .unwrap();
    let (shown, total): (usize, usize) = (shown.parse().unwrap(), total.parse().unwrap());
    assert!(shown <= 20 && shown <= total, "{line}");
    // Most severe first.
    let severities: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Alerts raised"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  critical") || l.starts_with("  warning"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let mut sorted = severities.clone();
    sorted.sort_by_key(|s| *s != "critical");
    assert_eq!(severities, sorted, "{text}");
    assert_the_demo_s_aws_inbox(&text);
}

/// The demo's third cloud (issue 29): the sample invitations pulled through one throttle, the
/// one near its deadline alerted with source aws, and accepted: its task started once,
/// followed to COMPLETE, and the new opportunity id printed.
fn assert_the_demo_s_aws_inbox(text: &str) {
    // The story's lines are wrapped at 80 columns: read it as one line.
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("AWS Partner Central: 4 invitations pulled (4 new)"),
        "{text}"
    );
    assert!(
        flat.contains("AWS answered 1 request(s) with ThrottlingException"),
        "{text}"
    );
    assert!(
        flat.contains("alert (source aws): critical AWS invitation \"Data lake on AWS\" for Northwind Traders expires in"),
        "{text}"
    );
    assert!(
        flat.contains("$ cosell-sync accept engi-sim0000000001"),
        "{text}"
    );
    let accepted = "invitation engi-sim0000000001 accepted in AWS Partner Central: opportunity O";
    let opportunity = flat
        .split_once(accepted)
        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or_default())
        .unwrap_or_else(|| panic!("the accept and its opportunity in {text}"));
    assert!(
        opportunity.chars().all(|c| c.is_ascii_digit()) && !opportunity.is_empty(),
        "{text}"
    );
    assert!(
        flat.contains("1 task start, 2 task polls")
            && flat.contains("AWS now has the invitation ACCEPTED"),
        "{text}"
    );
}

/// Root's shell on the documented layout: the read-only commands never read a secret they do
/// not use, so a secret file they cannot see (handed to the service by `LoadCredential=`) is
/// no reason to fail; the commands that talk to the clouds still need it.
#[tokio::test(flavor = "multi_thread")]
async fn read_only_commands_work_without_the_secret_files() {
    let env = TestEnv::new().await;
    assert!(env.run(&["sync"]).await.status.success());
    let secret = env.sim.state.credentials.client_secret.clone();
    env.edit_config(|t| {
        t.replace(
            &format!("client_secret = \"{secret}\""),
            "client_secret_file = \"not-here\"",
        )
    });
    for args in [
        &["status"][..],
        &["alerts", "list"],
        &["outbox", "list"],
        &["outbox"],
        &["audit"],
    ] {
        let out = env.run(args).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let out = env.run(&["sync"]).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("microsoft.client_secret_file: cannot read"),
        "{}",
        stderr(&out)
    );
}

/// Every line a person reads in a terminal fits 80 columns: each command's `--help`, `status`,
/// `alerts list`, `outbox list`, `audit`, `alerts test` and the demo's story (`check-config`
/// prints TOML, whose values cannot wrap).
#[tokio::test(flavor = "multi_thread")]
async fn help_status_alerts_and_demo_fit_80_columns() {
    fn too_wide(what: &str, text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.chars().count() > 80)
            .map(|l| format!("{what}: {} columns: {l}", l.chars().count()))
            .collect()
    }
    fn paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(prefix.clone());
        for sub in cmd.get_subcommands() {
            let mut path = prefix.clone();
            path.push(sub.get_name().to_string());
            paths(sub, path, out);
        }
    }
    let mut wide = Vec::new();
    let mut all = Vec::new();
    paths(
        &<cosell_sync::cli::Cli as clap::CommandFactory>::command(),
        vec![],
        &mut all,
    );
    for path in all {
        let mut args = path.clone();
        args.push("--help".into());
        let out = std::process::Command::new(crate::helpers::BIN)
            .args(&args)
            .output()
            .unwrap();
        wide.extend(too_wide(&args.join(" "), &stdout(&out)));
    }

    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::demo_set(30, chrono::Utc::now()));
    assert!(env.run(&["sync"]).await.status.success());
    // Issue 28: `outbox list` reached 296 columns, `audit` 307.
    let dead = stdout(&env.run(&["outbox", "list"]).await);
    assert!(dead.contains("create_lead"), "{dead}");
    // Triage decisions (dry run) in `status`, `status --referral` and `rules test`.
    env.edit_config(|t| {
        format!(
            "{t}\n[[rules]]\nname = \"outside-our-territory-and-far-too-small-for-our-team\"\n\
             not_countries = [\"ZW\"]\naction = \"decline\"\n\
             reason = \"Customer is outside our region and the deal is below our minimum size\"\n"
        )
    });
    assert!(env.run(&["sync"]).await.status.success());
    let rules = stdout(&env.run(&["rules", "test"]).await);
    assert!(
        rules.contains("would decline") || rules.contains("decline"),
        "{rules}"
    );
    let one = sample::referral_id(0);
    for args in [
        &["status"][..],
        &["status", "--referral", &one],
        &["rules", "test"],
        &["alerts", "list"],
        &["outbox", "list"],
        &["audit"],
        &["alerts", "test"],
    ] {
        let out = env.run(args).await;
        assert!(out.status.success(), "{}", stderr(&out));
        wide.extend(too_wide(&args.join(" "), &stdout(&out)));
    }
    let out = tokio::process::Command::new(crate::helpers::BIN)
        .args(["demo", "--referrals", "30"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    wide.extend(too_wide("demo", &stdout(&out)));
    assert!(wide.is_empty(), "{}", wide.join("\n"));
}

/// `[refresh] reads_per_hour = 0` with Google on would never re-read an opportunity, so a
/// won or lost stage would never reach Partner Center: refused, with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn zero_google_reads_per_hour_is_refused_with_the_reason() {
    let env = TestEnv::with_google("").await;
    env.edit_config(|t| t.replace("[refresh]\n", "[refresh]\nreads_per_hour = 0\n"));
    let out = env.run(&["check-config"]).await;
    assert_eq!(out.status.code(), Some(78));
    // Errors wrap to 80 columns: compare the words, not the line breaks.
    let words = stderr(&out)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        words.contains("refresh.reads_per_hour") && words.contains("Partner Center"),
        "{}",
        stderr(&out)
    );
}

/// Issue 30 items 7 and 8: a NUL byte in `state.path`, a retention under a day, an audit
/// retention under 30 days and a `thresholds` list past its cap are configuration errors
/// (exit 78, naming the key) for `check-config` and `sync` alike, not exit 1 at the first open.
#[tokio::test(flavor = "multi_thread")]
async fn nul_paths_short_retentions_and_long_lists_exit_78_naming_the_key() {
    let env = TestEnv::new().await;
    let state = env.state_db().display().to_string();
    let thresholds = vec!["\"1h\""; 17].join(", ");
    let cases = [
        ("state.path", format!("\\u0000{state}")),
        ("state.retention", format!("{state}\"\nretention = \"1ms")),
        (
            "state.audit_retention",
            format!("{state}\"\naudit_retention = \"0s"),
        ),
        (
            "alerts.thresholds",
            format!("{state}\"\n[alerts]\nthresholds = [{thresholds}]\n#\""),
        ),
    ];
    for (key, path) in cases {
        env.write_config("");
        env.edit_config(|t| {
            t.replace(
                &format!("path = \"{state}\""),
                &format!("path = \"{path}\""),
            )
        });
        for command in ["check-config", "sync"] {
            let out = env.run(&[command]).await;
            assert_eq!(
                out.status.code(),
                Some(78),
                "{key} {command}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains(key),
                "{key} {command}: {}",
                stderr(&out)
            );
        }
    }
}
