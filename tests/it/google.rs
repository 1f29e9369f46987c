//! The whole loop against the simulator of both clouds: leads out, write-back, field sync,
//! status mapping, conflicts, faults and crashes — and never a duplicate lead.

use std::collections::BTreeMap;
use std::time::Duration;

use cosell_sync::sim::{google::PARTNER_ID, sample, Fault, Faults};
use serde_json::Value;

use crate::helpers::{stderr, stdout, TestEnv, BIN};

fn writes(env: &TestEnv) -> u64 {
    env.sim.counter("patch")
        + env.sim.counter("google.create_lead")
        + env.sim.counter("google.patch_opportunity")
}

async fn sync_ok(env: &TestEnv) -> String {
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "sync failed: {}", stderr(&out));
    stdout(&out)
}

/// Links `referral` to a fresh opportunity made from its lead, via the CLI.
async fn convert_and_link(env: &TestEnv, referral: &str, opp_id: u64) -> String {
    let lead = env.sim.referral(referral).unwrap()["externalReferenceId"]
        .as_str()
        .expect("written back")
        .to_string();
    let opp = env.sim.convert_lead(&lead, opp_id).unwrap();
    let out = env.run(&["link", referral, &opp]).await;
    assert!(out.status.success(), "link: {}", stderr(&out));
    opp
}

#[tokio::test(flavor = "multi_thread")]
async fn each_pending_referral_becomes_exactly_one_lead_and_a_second_sync_writes_nothing() {
    let env = TestEnv::with_google("").await;
    let referrals = sample::pending_inbox(30, chrono::Utc::now());
    env.sim.put_referrals(referrals.clone());
    sync_ok(&env).await;

    let leads = env.sim.google_leads();
    assert_eq!(leads.len(), 30);
    for r in &referrals {
        let id = r["id"].as_str().unwrap();
        let lead = leads
            .iter()
            .find(|l| l["externalSystemId"] == id)
            .unwrap_or_else(|| panic!("no lead for {id}"));
        let written_back = env.sim.referral(id).unwrap()["externalReferenceId"].clone();
        assert_eq!(written_back, lead["name"], "write-back of {id}");
    }
    assert_eq!(env.sim.counter("google.create_lead"), 30);
    assert_eq!(env.sim.counter("patch"), 30, "one write-back per referral");

    let before = writes(&env);
    sync_ok(&env).await;
    sync_ok(&env).await;
    assert_eq!(
        writes(&env),
        before,
        "no-change cycles make zero write calls"
    );
    assert_eq!(env.sim.google_leads().len(), 30);

    let audit: i64 = env.query("SELECT COUNT(*) FROM audit_log WHERE outcome = 'ok'", |r| {
        r.get(0)
    });
    assert_eq!(audit, 60, "every remote write is audited");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deal_value_change_reaches_google_as_deal_size_only() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::pending_inbox(3, chrono::Utc::now()));
    sync_ok(&env).await;
    let id = sample::referral_id(1);
    let opp = convert_and_link(&env, &id, 77).await;
    sync_ok(&env).await;
    assert!(
        env.sim.patch_masks().is_empty(),
        "the lead's values already match: nothing to patch"
    );

    env.sim
        .edit_referral(&id, |r| r["details"]["dealValue"] = 424_242.0.into());
    sync_ok(&env).await;
    assert_eq!(env.sim.patch_masks(), vec!["dealSize".to_string()]);
    assert_eq!(env.sim.opportunity(&opp).unwrap()["dealSize"], 424_242.0);

    // Google moves the close date: Microsoft gets closingDateTime.
    env.sim.edit_opportunity(&opp, |o| {
        o["closeDate"] = serde_json::json!({"year": 2028, "month": 1, "day": 15})
    });
    sync_ok(&env).await;
    let closing = env.sim.referral(&id).unwrap()["details"]["closingDateTime"].clone();
    assert_eq!(closing, "2028-01-15T00:00:00Z");
    let before = writes(&env);
    sync_ok(&env).await;
    assert_eq!(writes(&env), before, "settled: no more writes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_google_lost_stage_closes_the_referral() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::pending_inbox(2, chrono::Utc::now()));
    sync_ok(&env).await;
    let id = sample::referral_id(0);
    let opp = convert_and_link(&env, &id, 5).await;
    env.sim
        .edit_opportunity(&opp, |o| o["salesStage"] = "SALES_STAGE_CLOSED_LOST".into());
    sync_ok(&env).await;
    let r = env.sim.referral(&id).unwrap();
    assert_eq!(
        (r["status"].as_str(), r["substatus"].as_str()),
        (Some("Closed"), Some("Lost"))
    );
    assert!(r["statusReason"].as_str().unwrap().contains(&opp));
    // Closed is terminal: later cycles never write to it.
    let patches = env.sim.counter("patch");
    env.sim
        .edit_opportunity(&opp, |o| o["dealSize"] = 1.0.into());
    sync_ok(&env).await;
    sync_ok(&env).await;
    assert_eq!(env.sim.counter("patch"), patches);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_microsoft_decline_closes_the_google_opportunity() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::pending_inbox(2, chrono::Utc::now()));
    sync_ok(&env).await;
    let id = sample::referral_id(0);
    let opp = convert_and_link(&env, &id, 6).await;
    env.sim.edit_referral(&id, |r| {
        r["status"] = "Closed".into();
        r["substatus"] = "Declined".into();
    });
    sync_ok(&env).await;
    assert_eq!(
        env.sim.opportunity(&opp).unwrap()["salesStage"],
        "SALES_STAGE_CLOSED_LOST"
    );
    assert_eq!(env.sim.patch_masks(), vec!["salesStage".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_under_manual_writes_nothing_and_shows_in_status() {
    let env = TestEnv::with_google("conflict = \"manual\"\n").await;
    env.sim
        .put_referrals(sample::pending_inbox(2, chrono::Utc::now()));
    sync_ok(&env).await;
    let id = sample::referral_id(1);
    let opp = convert_and_link(&env, &id, 9).await;
    sync_ok(&env).await;
    env.sim
        .edit_referral(&id, |r| r["details"]["dealValue"] = 111.0.into());
    env.sim
        .edit_opportunity(&opp, |o| o["dealSize"] = 222.0.into());
    let before = writes(&env);
    sync_ok(&env).await;
    assert_eq!(writes(&env), before, "manual: no write on either side");
    assert_eq!(env.sim.opportunity(&opp).unwrap()["dealSize"], 222.0);

    let out = env.run(&["status", "--json"]).await;
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let conflict = &report["conflicts"][0];
    assert_eq!(conflict["referral_id"], id.as_str());
    assert_eq!(conflict["field"], "dealValue");
    assert_eq!(conflict["microsoft_value"], "111");
    assert_eq!(conflict["google_value"], "222");
    let text = stdout(&env.run(&["status"]).await);
    assert!(text.contains("Conflicts"), "{text}");

    // A person settles it on one side: the conflict goes away, nothing is written.
    env.sim
        .edit_opportunity(&opp, |o| o["dealSize"] = 111.0.into());
    sync_ok(&env).await;
    let report: Value =
        serde_json::from_str(&stdout(&env.run(&["status", "--json"]).await)).unwrap();
    assert!(report["conflicts"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_referral_that_cannot_make_a_lead_is_reported_not_sent() {
    let env = TestEnv::with_google("").await;
    let mut referrals = sample::pending_inbox(3, chrono::Utc::now());
    referrals[1]["details"]["closingDateTime"] = Value::Null;
    env.sim.put_referrals(referrals);
    sync_ok(&env).await;
    assert_eq!(env.sim.google_leads().len(), 2);
    let report: Value =
        serde_json::from_str(&stdout(&env.run(&["status", "--json"]).await)).unwrap();
    let blocked = &report["cannot_forward"][0];
    assert_eq!(blocked["referral_id"], sample::referral_id(1).as_str());
    assert!(blocked["reason"]
        .as_str()
        .unwrap()
        .contains("details.closingDateTime"));
}

#[tokio::test(flavor = "multi_thread")]
async fn link_checks_the_resource_first() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::pending_inbox(1, chrono::Utc::now()));
    sync_ok(&env).await;
    let id = sample::referral_id(0);
    let missing = format!("partners/{PARTNER_ID}/opportunities/404");
    let out = env.run(&["link", &id, &missing]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("NOT_FOUND"), "{}", stderr(&out));
    let out = env.run(&["link", &id, "opportunities/1"]).await;
    assert!(
        stderr(&out).contains("not a Google resource name"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["link", "no-such-referral", &missing]).await;
    assert!(
        stderr(&out).contains("not in the database"),
        "{}",
        stderr(&out)
    );
}

/// Runs `sync` until the outbox has nothing open (each run retries what is due).
async fn sync_until_settled(env: &TestEnv, max_runs: usize) {
    let mut last = String::new();
    for _ in 0..max_runs {
        let out = env.run(&["sync"]).await;
        last = format!("{}{}", stdout(&out), stderr(&out));
        let open: i64 = env.query(
            "SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'in_flight')",
            |r| r.get(0),
        );
        // Settled means a sync ran to the end and left nothing open (a failed sync that
        // planned nothing leaves nothing open too).
        if out.status.success() && open == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let open: Vec<(i64, String, String, String)> = {
        let conn = rusqlite::Connection::open(env.state_db()).unwrap();
        let mut stmt = conn
            .prepare("SELECT id, kind, state, next_attempt_at FROM outbox WHERE state IN ('pending', 'in_flight')")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    panic!("the outbox did not settle in {max_runs} runs: open {open:?}; last sync: {last}");
}

/// Every pending referral has exactly one lead, or its absence is explained by an outbox
/// row a person can act on; no referral ever has two leads.
fn assert_no_duplicates_and_everything_explained(
    env: &TestEnv,
    referrals: &[Value],
) -> BTreeMap<String, usize> {
    let per_id = env.sim.leads_per_external_id();
    let duplicates: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "duplicate leads: {duplicates:?}");
    let conn = rusqlite::Connection::open(env.state_db()).unwrap();
    let mut unexplained = Vec::new();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for r in referrals {
        let id = r["id"].as_str().unwrap();
        let linked: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM links WHERE referral_id = ?1 AND lead_name IS NOT NULL)", [id], |r| r.get(0))
            .unwrap();
        if linked {
            *states.entry("linked".into()).or_default() += 1;
            continue;
        }
        let state: Option<String> = conn
            .query_row(
                "SELECT state FROM outbox WHERE referral_id = ?1 AND kind = 'create_lead' AND state IN ('pending', 'dead', 'quarantined')",
                [id],
                |r| r.get(0),
            )
            .ok();
        match state {
            Some(s) => *states.entry(s).or_default() += 1,
            None => unexplained.push(id.to_string()),
        }
    }
    let rows_of = |id: &str| -> Vec<(String, String)> {
        let mut stmt = conn
            .prepare("SELECT kind, state FROM outbox WHERE referral_id = ?1")
            .unwrap();
        stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(
        unexplained.is_empty(),
        "referrals without a lead and without a reason: {:?}",
        unexplained
            .iter()
            .take(3)
            .map(|id| (id, rows_of(id)))
            .collect::<Vec<_>>()
    );
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    states
}

#[tokio::test(flavor = "multi_thread")]
async fn under_heavy_faults_repeated_syncs_converge_without_a_duplicate_lead() {
    let env = TestEnv::with_google("").await;
    // Generous in-call retries on the Microsoft side; the outbox retries the rest.
    env.edit_config(|c| {
        c.replace(
            "max_delay = \"500ms\"",
            "max_delay = \"100ms\"\nmax_retries = 10\nmax_total = \"30s\"",
        )
    });
    let referrals = sample::pending_inbox(60, chrono::Utc::now());
    env.sim.put_referrals(referrals.clone());
    env.sim.set_faults(Faults {
        rate_429: 0.25,
        rate_5xx: 0.15,
        rate_drop: 0.05,
        retry_after_secs: 0,
        ..Faults::default()
    });
    sync_until_settled(&env, 40).await;
    let states = assert_no_duplicates_and_everything_explained(&env, &referrals);
    assert!(
        states.get("linked").copied().unwrap_or(0) > 30,
        "most referrals got their lead: {states:?}"
    );
    // Quarantined creates are the ones whose answer was cut: the lead may exist, and a
    // person decides. Every lead Google holds belongs to a linked or quarantined referral.
    let quarantined: i64 = env.query(
        "SELECT COUNT(*) FROM outbox WHERE state = 'quarantined'",
        |r| r.get(0),
    );
    assert!(env.sim.google_leads().len() as i64 - states["linked"] as i64 <= quarantined);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_whose_answer_is_lost_is_quarantined_and_resolved_by_link() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::pending_inbox(1, chrono::Utc::now()));
    let id = sample::referral_id(0);
    // Requests: the inbox page, then at once the create of its new referral — cut after
    // Google made it.
    env.sim.script_faults([Fault::Pass, Fault::Drop]);
    sync_ok(&env).await;
    let leads = env.sim.google_leads();
    assert_eq!(
        leads.len(),
        1,
        "the lead exists in Google although the answer was lost"
    );
    let state: String = env.query("SELECT state FROM outbox WHERE kind = 'create_lead'", |r| {
        r.get(0)
    });
    assert_eq!(state, "quarantined");
    // Never retried blindly: more cycles create nothing.
    sync_ok(&env).await;
    sync_ok(&env).await;
    assert_eq!(env.sim.counter("google.create_lead"), 1);
    let status = stdout(&env.run(&["status"]).await);
    assert!(status.contains("quarantined"), "{status}");

    let lead = leads[0]["name"].as_str().unwrap().to_string();
    let out = env.run(&["link", &id, &lead]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    sync_ok(&env).await;
    assert_eq!(
        env.sim.referral(&id).unwrap()["externalReferenceId"],
        lead.as_str()
    );
    let quarantined: i64 = env.query(
        "SELECT COUNT(*) FROM outbox WHERE state = 'quarantined'",
        |r| r.get(0),
    );
    assert_eq!(quarantined, 0, "link resolved the quarantined create");
    assert_eq!(env.sim.google_leads().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_at_random_points_while_creating_leads_never_duplicates() {
    let env = TestEnv::with_google("").await;
    let referrals = sample::pending_inbox(80, chrono::Utc::now());
    env.sim.put_referrals(referrals.clone());
    // A SIGKILL can land between Entra's answer and the rename of the rotated token file;
    // with the simulator's strict rotation every later sync would then fail invalid_grant.
    // This test is about leads, so the old token stays valid here, as Entra may keep it.
    env.sim.keep_rotated_refresh_tokens();
    // Slow answers, so kills land in the middle of the creates (80 creates and 80
    // write-backs, 4 at a time, take a few seconds).
    env.sim.set_faults(Faults {
        delay: Duration::from_millis(25),
        ..Faults::default()
    });
    let mut kills = 0;
    for _ in 0..40 {
        let mut child = tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(&env.config)
            .arg("sync")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Random kills, then (after five) a run allowed to finish: on a loaded machine every
        // run would otherwise be killed mid-create and every create end up quarantined.
        let wait = if kills >= 5 {
            Duration::from_secs(60)
        } else {
            Duration::from_millis(150 + fastrand::u64(0..500))
        };
        match tokio::time::timeout(wait, child.wait()).await {
            Ok(status) => {
                if status.unwrap().success() && kills >= 3 {
                    let open: i64 = env.query(
                        "SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'in_flight')",
                        |r| r.get(0),
                    );
                    if open == 0 {
                        break;
                    }
                }
            }
            Err(_) => {
                child.kill().await.unwrap(); // SIGKILL
                kills += 1;
            }
        }
    }
    assert!(
        kills >= 3,
        "the test must actually kill the process mid-run ({kills} kills)"
    );
    env.sim.set_faults(Faults::default());
    sync_until_settled(&env, 5).await;
    let states = assert_no_duplicates_and_everything_explained(&env, &referrals);
    assert!(states.get("linked").copied().unwrap_or(0) > 0, "{states:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_commands_list_retry_and_drop() {
    let env = TestEnv::with_google("max_attempts = 1\n").await;
    let mut referrals = sample::pending_inbox(2, chrono::Utc::now());
    // An unknown product family value the simulator rejects: a permanent 400.
    referrals[0]["details"]["requirements"]["products"] = serde_json::json!([{"id": "Weird"}]);
    env.sim.put_referrals(referrals);
    env.edit_config(|c| {
        c.replace(
            "product_family = \"GOOGLE_CLOUD_PLATFORM\"",
            "product_family = \"GOOGLE_CLOUD_PLATFORM\"\nproduct_families = { Weird = \"not a valid value\" }",
        )
    });
    sync_ok(&env).await;
    let list = stdout(&env.run(&["outbox", "list", "--state", "dead"]).await);
    assert!(
        list.contains("create_lead") && list.contains("INVALID_ARGUMENT"),
        "{list}"
    );
    let id: i64 = env.query("SELECT id FROM outbox WHERE state = 'dead'", |r| r.get(0));
    let status = stdout(&env.run(&["status"]).await);
    assert!(status.contains("Needs a person"), "{status}");

    let out = env.run(&["outbox", "retry", &id.to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["outbox", "drop", &id.to_string()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["outbox", "drop", &id.to_string()]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a dropped action cannot be dropped again"
    );
    let out = env.run(&["outbox", "retry", "99999"]).await;
    assert!(
        stderr(&out).contains("no outbox action"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_sends_nothing_changes_nothing_and_the_next_real_run_does_everything() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::pending_inbox(3, chrono::Utc::now()));
    sync_ok(&env).await;
    let fingerprint = |env: &TestEnv| -> (i64, i64, String) {
        env.query(
            "SELECT (SELECT COUNT(*) FROM outbox), (SELECT COUNT(*) FROM referrals),
                    (SELECT value FROM sync_watermarks)",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    };
    let before = fingerprint(&env);
    // Two new referrals and a deal-value change.
    let mut more = sample::pending_inbox(5, chrono::Utc::now());
    more.drain(..3);
    env.sim.put_referrals(more);
    let writes_before = writes(&env);

    let out = env.cli(&["--dry-run", "sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert_eq!(log.matches("DRY RUN: would send").count(), 2, "{log}");
    assert!(
        log.contains("POST") && log.contains(&sample::referral_id(3)),
        "{log}"
    );
    assert_eq!(writes(&env), writes_before, "nothing reached either API");
    assert_eq!(
        fingerprint(&env),
        before,
        "outbox, referrals and watermark untouched"
    );

    sync_ok(&env).await;
    assert_eq!(
        env.sim.google_leads().len(),
        5,
        "the real run creates what the dry run showed"
    );
    assert_eq!(env.sim.counter("google.create_lead"), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_lists_each_remote_write_of_a_referral() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::pending_inbox(2, chrono::Utc::now()));
    sync_ok(&env).await;
    let id = sample::referral_id(1);
    let out = env.run(&["audit", "--referral", &id, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, vec!["leads.create", "PATCH"]);
    assert!(rows
        .iter()
        .all(|r| r["outcome"] == "ok" && r["request_id"].is_string()));
    assert_eq!(rows[1]["fields"], "/externalReferenceId");
    let text = stdout(&env.run(&["audit", "--since", "2000-01-01"]).await);
    // One head line per write, its details indented under it.
    let heads = text.lines().filter(|l| !l.starts_with(' ')).count();
    assert_eq!(heads, 4, "{text}");
    let future = stdout(&env.run(&["audit", "--since", "2999-01-01"]).await);
    assert!(future.contains("no remote writes"), "{future}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_logs_database_status_config_or_alerts() {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let env = TestEnv::with_google(&format!(
        "\n[[alerts.webhook]]\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer hook-secret-42\" }}\n",
        server.uri()
    ))
    .await;
    env.sim
        .put_referrals(sample::demo_set(8, chrono::Utc::now()));
    let run = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("sync")
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let rotated = std::fs::read_to_string(env.dir.path().join("microsoft-refresh-token")).unwrap();
    let key_json: Value = serde_json::from_str(&env.sim.google_key_json()).unwrap();
    let private_key = key_json["private_key"].as_str().unwrap();
    let key_fragment = &private_key.lines().nth(5).unwrap()[..40];
    let creds = &env.sim.state.credentials;
    let secrets = [
        creds.client_secret.as_str(),
        creds.refresh_token.as_str(),
        rotated.trim(),
        "sim-access-",
        "ya29.sim-",
        "BEGIN PRIVATE KEY",
        key_fragment,
        "hook-secret-42",
    ];
    let alert_bodies: String = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(!alert_bodies.is_empty());
    let places = [
        (
            "sync output (RUST_LOG=trace)",
            format!("{}{}", stdout(&run), stderr(&run)),
        ),
        ("database", {
            let mut bytes = std::fs::read(env.state_db()).unwrap();
            bytes
                .extend(std::fs::read(env.state_db().with_extension("db-wal")).unwrap_or_default());
            String::from_utf8_lossy(&bytes).into_owned()
        }),
        ("status", stdout(&env.cli(&["status", "--json"]).await)),
        ("check-config", stdout(&env.cli(&["check-config"]).await)),
        ("alert payloads", alert_bodies),
    ];
    assert!(
        places[0].1.contains("TRACE") || places[0].1.contains("DEBUG"),
        "trace logging was on"
    );
    for (place, text) in &places {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret:?} leaked into {place}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_row_that_cannot_be_read_is_dead_and_alerted_never_silently_closed() {
    let env = TestEnv::with_google("").await;
    env.sim
        .put_referrals(sample::pending_inbox(1, chrono::Utc::now()));
    sync_ok(&env).await;
    let conn = rusqlite::Connection::open(env.state_db()).unwrap();
    conn.execute(
        "INSERT INTO outbox (referral_id, kind, target, payload, state, next_attempt_at, created_at, updated_at)
         VALUES (?1, 'patch_opportunity', 'partners/1234567/opportunities/9',
                 '{\"v\": 1, \"action\": \"patch_opportunity\", \"body\": {}}', 'pending',
                 '2000-01-01T00:00:00Z', '2000-01-01T00:00:00Z', '2000-01-01T00:00:00Z')",
        [sample::referral_id(0)],
    )
    .unwrap();
    drop(conn);
    let patches_before = env.sim.counter("google.patch_opportunity");
    sync_ok(&env).await;
    let (state, error): (String, String) = env.query(
        "SELECT state, last_error FROM outbox WHERE target = 'partners/1234567/opportunities/9'",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(state, "dead");
    assert!(
        error.contains("cannot be read") && error.contains("missing field"),
        "{error}"
    );
    assert_eq!(
        env.sim.counter("google.patch_opportunity"),
        patches_before,
        "nothing sent"
    );
    let alerted: i64 = env.query(
        "SELECT COUNT(*) FROM alerts WHERE kind = 'action_failed'",
        |r| r.get(0),
    );
    assert_eq!(alerted, 1);
}

/// `sync` is one tick of `run`: a Google record read moments ago is not due, so a change made
/// after that read is not seen, and the last line says so (how many not re-read, when the
/// next is due). `sync --all` re-reads every tracked record that is not final, and sees it.
/// The record's own timestamps prove the order (read, then changed, then read by `--all`),
/// moments apart: no need to wait a whole second between them.
#[tokio::test(flavor = "multi_thread")]
async fn sync_all_sees_a_google_change_made_a_second_earlier_and_sync_says_what_it_skipped() {
    let env = TestEnv::with_google("").await;
    // The real schedule: a record read is not due again for a while.
    env.edit_config(|t| t.replace("min_interval = \"0s\"", "min_interval = \"10m\""));
    env.sim
        .put_referrals(sample::pending_inbox(2, chrono::Utc::now()));
    sync_ok(&env).await;
    let id = sample::referral_id(0);
    let opp = convert_and_link(&env, &id, 6).await;
    // This sync reads the just-linked opportunity (due at once) and schedules its next read.
    let first = sync_ok(&env).await;
    assert!(first.contains("google records: "), "{first}");
    let checked = |env: &TestEnv| {
        let sql = format!("SELECT last_checked_at FROM refresh_schedule WHERE name = '{opp}'");
        let at: String = env.query(&sql, |r| r.get(0));
        cosell_sync::timefmt::parse_timestamp(&at).expect("a timestamp")
    };
    let read_at = checked(&env);
    env.sim
        .edit_opportunity(&opp, |o| o["salesStage"] = "SALES_STAGE_CLOSED_LOST".into());
    let changed_at = chrono::Utc::now();
    assert!(read_at < changed_at, "changed after its last read");
    let skipped = sync_ok(&env).await;
    let last = skipped.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("google records: 0 re-read, 3 not re-read (not due); next due 20"),
        "{skipped}"
    );
    assert!(last.contains("sync --all"), "{last}");
    let pending = env.sim.referral(&id).unwrap();
    assert_eq!(pending["status"].as_str(), Some("New"), "not re-read yet");

    let all = env.run(&["sync", "--all"]).await;
    assert!(all.status.success(), "sync --all: {}", stderr(&all));
    let out = stdout(&all);
    assert!(
        out.contains("google records: 3 re-read, 0 not re-read"),
        "{out}"
    );
    let r = env.sim.referral(&id).unwrap();
    assert_eq!(
        (r["status"].as_str(), r["substatus"].as_str()),
        (Some("Closed"), Some("Lost")),
        "{out}"
    );
    assert!(
        checked(&env) > changed_at,
        "re-read by --all after the change"
    );
}
