//! Triage rules (spec §7) against the simulator: a dry run records the decisions and sends
//! nothing; apply sends one PATCH per decided referral (the right body, `If-Match`, audited
//! as `rule:NAME`) and never a second; a referral a person answered first is never touched;
//! the hourly cap holds across restarts with one `rule_limit` alert per episode.

use chrono::{Duration, Utc};
use cosell_sync::sim::sample;
use serde_json::{json, Value};

use crate::helpers::{stderr, stdout, TestEnv};

/// Sample referrals 0..n (sample i's country: US, FR, GB, DE, CA, AU, US, ES, NL, IE), each
/// one hour older than the next, so referral 0 has the latest deadline.
fn inbox(env: &TestEnv, n: usize) -> Vec<String> {
    let now = Utc::now();
    env.sim.put_referrals(
        (0..n).map(|i| sample::referral(i, now, Duration::hours(24 + i as i64), "New", "Pending")),
    );
    (0..n).map(sample::referral_id).collect()
}

/// Declines every customer outside the US and Canada; keeps Contoso (FR) for people.
fn rules(mode: &str, cap: u32) -> String {
    format!(
        r#"
[triage]
mode = "{mode}"
max_answers_per_hour = {cap}

[[rules]]
name = "keep-contoso"
customer = "Contoso"
action = "none"

[[rules]]
name = "outside-territory"
not_countries = ["US", "CA"]
action = "decline"
reason = "Customer is outside our region"
"#
    )
}

fn decision_body() -> Value {
    json!([
        {"op": "replace", "path": "/status", "value": "Closed"},
        {"op": "replace", "path": "/substatus", "value": "Declined"},
        {"op": "replace", "path": "/statusReason", "value": "Customer is outside our region"}
    ])
}

fn decisions(env: &TestEnv) -> Vec<(String, Option<String>, Option<String>, String)> {
    let db = rusqlite::Connection::open(env.state_db()).unwrap();
    let mut stmt = db
        .prepare(
            "SELECT referral_id, rule, decision, state FROM triage_decisions ORDER BY referral_id",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn rule_limit_alerts(env: &TestEnv) -> i64 {
    env.query(
        "SELECT COUNT(*) FROM alerts WHERE kind = 'rule_limit'",
        |r| r.get(0),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_records_each_decision_and_sends_nothing() {
    let env = TestEnv::with_extra(&rules("dry-run", 20)).await;
    let ids = inbox(&env, 3);
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.sim.patches().is_empty(), "a dry run sends nothing");
    let got = decisions(&env);
    let row = |i: usize| got.iter().find(|d| d.0 == ids[i]).cloned().unwrap();
    assert_eq!(row(0).1, None, "Fabrikam (US): no rule");
    assert_eq!(
        (row(1).1.as_deref(), row(1).2.as_deref(), row(1).3.as_str()),
        (Some("keep-contoso"), Some("none"), "shown")
    );
    assert_eq!(
        (row(2).1.as_deref(), row(2).2.as_deref(), row(2).3.as_str()),
        (Some("outside-territory"), Some("decline"), "shown")
    );
    // Re-evaluated with the current rules every cycle: a rule removed, its decision gone.
    env.write_config(&rules("dry-run", 20).replace("Contoso", "Nobody"));
    assert!(env.run(&["sync"]).await.status.success());
    let got = decisions(&env);
    assert_eq!(
        got.iter().find(|d| d.0 == ids[1]).unwrap().1.as_deref(),
        Some("outside-territory")
    );
    assert!(env.sim.patches().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_sends_one_patch_per_decided_referral_audited_as_the_rule() {
    let env = TestEnv::with_extra(&rules("apply", 20)).await;
    let ids = inbox(&env, 4);
    let etags: Vec<Value> = ids
        .iter()
        .map(|id| env.sim.referral(id).unwrap()["eTag"].clone())
        .collect();
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // 0 Fabrikam (US) and 4 Tailspin (CA): no rule; 1 Contoso: none; 2 (GB), 3 (DE): declined.
    for i in [0, 1] {
        assert!(env.sim.applied_patches(&ids[i]).is_empty(), "referral {i}");
    }
    for i in [2, 3] {
        let patches = env.sim.applied_patches(&ids[i]);
        assert_eq!(patches.len(), 1, "referral {i}: {patches:?}");
        assert_eq!(patches[0].if_match.as_deref(), etags[i].as_str());
        assert_eq!(patches[0].body, decision_body());
        let audit = stdout(&env.run(&["audit", "--referral", &ids[i]]).await);
        assert!(audit.contains("by: rule:outside-territory"), "{audit}");
    }
    assert_eq!(env.sim.patches().len(), 2);
    // Another cycle, and another: never a second answer.
    assert!(env.run(&["sync"]).await.status.success());
    assert!(env.run(&["sync"]).await.status.success());
    assert_eq!(
        env.sim.patches().len(),
        2,
        "no rule answers a referral twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_referral_a_person_answered_first_is_never_touched_by_a_rule() {
    let env = TestEnv::with_extra(&rules("dry-run", 20)).await;
    let ids = inbox(&env, 4);
    assert!(env.run(&["sync"]).await.status.success());
    // A person accepts referral 2 (GB) while the rules only preview a decline for it.
    let out = env.run(&["accept", &ids[2]]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    env.write_config(&rules("apply", 20));
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let patches = env.sim.applied_patches(&ids[2]);
    assert_eq!(patches.len(), 1, "only the person's accept: {patches:?}");
    assert_eq!(patches[0].body[0]["value"], "Active");
    assert_eq!(
        env.sim.applied_patches(&ids[3]).len(),
        1,
        "the other is declined"
    );
    let audit = stdout(&env.run(&["audit", "--referral", &ids[2]]).await);
    assert!(!audit.contains("rule:"), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hourly_cap_holds_across_restarts_with_one_alert_per_episode() {
    let env = TestEnv::with_extra(&rules("apply", 2)).await;
    // 2, 3, 5, 7, 8: outside the territory (1 is Contoso, kept; 0, 4, 6 in US/CA).
    let ids = inbox(&env, 9);
    let declined = [2usize, 3, 5, 7, 8];
    let sent = |env: &TestEnv| -> Vec<usize> {
        declined
            .iter()
            .copied()
            .filter(|&i| !env.sim.applied_patches(&ids[i]).is_empty())
            .collect()
    };
    assert!(env.run(&["sync"]).await.status.success());
    assert_eq!(sent(&env), [7, 8], "nearest deadline first (the oldest)");
    assert_eq!(rule_limit_alerts(&env), 1);
    // Each `run` is a new process on the database: the cap and the episode are stored.
    for _ in 0..2 {
        assert!(env.run(&["sync"]).await.status.success());
        assert_eq!(sent(&env), [7, 8], "the cap holds across restarts");
        assert_eq!(rule_limit_alerts(&env), 1, "one alert per episode");
    }
    let held = decisions(&env)
        .into_iter()
        .filter(|d| d.3 == "held")
        .count();
    assert_eq!(held, 3);
    // An hour later, two more; still one held: the same episode.
    let an_hour_ago = |env: &TestEnv| {
        let db = rusqlite::Connection::open(env.state_db()).unwrap();
        db.execute(
            "UPDATE triage_answers SET queued_at = '2000-01-01T00:00:00.000000000Z'",
            [],
        )
        .unwrap();
    };
    an_hour_ago(&env);
    assert!(env.run(&["sync"]).await.status.success());
    assert_eq!(sent(&env), [3, 5, 7, 8]);
    assert_eq!(rule_limit_alerts(&env), 1);
    an_hour_ago(&env);
    assert!(env.run(&["sync"]).await.status.success());
    assert_eq!(sent(&env), declined, "the last one; the episode ends");
    assert_eq!(env.sim.patches().len(), 5, "one PATCH each");
    // A new episode raises a new alert.
    let now = Utc::now();
    env.sim.put_referrals(
        [12usize, 13, 15].map(|i| sample::referral(i, now, Duration::hours(30), "New", "Pending")),
    );
    assert!(env.run(&["sync"]).await.status.success());
    assert_eq!(
        rule_limit_alerts(&env),
        2,
        "a new episode, a new alert: {:?}",
        decisions(&env)
    );
}

/// `rules test`: every referral awaiting an answer, its rule and decision, with the rules
/// as configured now; nothing sent, nothing recorded; 78 on a bad rule.
#[tokio::test(flavor = "multi_thread")]
async fn rules_test_previews_every_awaiting_referral_and_sends_nothing() {
    let env = TestEnv::with_extra(&rules("apply", 20)).await;
    let ids = inbox(&env, 3);
    // The referrals are stored by a sync under no rules at all.
    env.write_config("");
    assert!(env.run(&["sync"]).await.status.success());
    env.write_config(&rules("apply", 20));
    let out = env.run(&["rules", "test", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let preview: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let by_id = |i: usize| {
        preview
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["referral_id"] == ids[i].as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(preview.as_array().unwrap().len(), 3);
    assert_eq!(
        by_id(0),
        json!({"referral_id": ids[0], "source": "microsoft", "rule": null, "decision": null, "reason": null})
    );
    assert_eq!(by_id(1)["decision"], "none");
    assert_eq!(
        by_id(2),
        json!({"referral_id": ids[2], "source": "microsoft", "rule": "outside-territory",
               "decision": "decline", "reason": "Customer is outside our region"})
    );
    let table = stdout(&env.run(&["rules", "test"]).await);
    assert!(table.contains("outside-territory"), "{table}");
    assert!(table.contains("nothing was sent"), "{table}");
    assert!(
        env.sim.patches().is_empty(),
        "apply mode, but a preview sends nothing"
    );
    assert!(decisions(&env).is_empty(), "and records nothing");

    env.write_config(&rules("apply", 20).replace("reason = ", "# reason = "));
    let out = env.run(&["rules", "test", "--json"]).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("rules[1].reason"), "{}", stderr(&out));
}

/// The decisions where people look: `status` counts per rule and decision, `status
/// --referral` says it, expiry alerts carry `rule`, `rule_decision` and `rule_mode`.
#[tokio::test(flavor = "multi_thread")]
async fn decisions_show_in_status_and_in_expiry_alerts() {
    let env = TestEnv::with_extra(&rules("dry-run", 20)).await;
    let now = Utc::now();
    // Referral 2 (GB) 20 hours from its deadline: it gets an expiry alert at once.
    env.sim.put_referrals([sample::referral(
        2,
        now,
        Duration::days(14) - Duration::hours(20),
        "New",
        "Pending",
    )]);
    let id = sample::referral_id(2);
    assert!(env.run(&["sync"]).await.status.success());
    let status: Value =
        serde_json::from_str(&stdout(&env.run(&["status", "--json"]).await)).unwrap();
    assert_eq!(status["triage"]["mode"], "dry-run");
    assert_eq!(
        status["triage"]["decisions"],
        json!([{"rule": "outside-territory", "decision": "decline", "state": "shown", "count": 1}])
    );
    let text = stdout(&env.run(&["status"]).await);
    assert!(text.contains("would decline"), "{text}");
    let one = stdout(&env.run(&["status", "--referral", &id]).await);
    assert!(
        one.contains("rule outside-territory would decline: Customer is outside our region"),
        "{one}"
    );
    let payload: String = env.query(
        "SELECT payload FROM alerts WHERE kind = 'referral_expiring'",
        |r| r.get(0),
    );
    let alert: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(alert["rule"], "outside-territory");
    assert_eq!(alert["rule_decision"], "decline");
    assert_eq!(alert["rule_mode"], "dry-run");
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("rule outside-territory would decline"),
        "{alert}"
    );
}

/// The action page says what the rules decided, and the JSON sink gets the alert's
/// `rule`, `rule_decision` and `rule_mode` (the daemon binary, end to end).
#[tokio::test(flavor = "multi_thread")]
async fn the_action_page_and_the_json_alert_say_what_the_rules_decided() {
    let page = crate::actions::start(0..3, &rules("dry-run", 20)).await;
    let urls = crate::actions::action_urls(&page, 3).await;
    let declined = sample::referral_id(2);
    let (status, html) = crate::actions::get(&urls[&declined], &[]).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("rule outside-territory would decline: Customer is outside our region"),
        "{html}"
    );
    let (_, html) = crate::actions::get(&urls[&sample::referral_id(0)], &[]).await;
    assert!(html.contains("no rule decides it"), "{html}");
    let alerts: Vec<Value> = page
        .server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let alert = alerts
        .iter()
        .find(|a| a["kind"] == "referral_expiring" && a["referral_id"] == declined.as_str())
        .unwrap();
    assert_eq!(
        (&alert["rule"], &alert["rule_decision"], &alert["rule_mode"]),
        (
            &json!("outside-territory"),
            &json!("decline"),
            &json!("dry-run")
        )
    );
    assert!(page.env.sim.patches().is_empty(), "a dry run sends nothing");
}
