//! Alerts that fit a team (issue 19): each sink takes only its kinds, severity and thresholds,
//! exactly once and across restarts and config changes; a flood becomes one digest per chat
//! sink; `check-config` names a wrong routing key; `alerts test` says what each sink gets.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Duration, Utc};
use cosell_sync::sim::sample;
use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{stderr, stdout, TestEnv};

async fn receiver() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

/// A webhook sink named `name` with extra routing keys (`thresholds = ["4h"]`, ...).
fn sink(url: &str, name: &str, format: &str, routing: &str) -> String {
    format!("\n[[alerts.webhook]]\nurl = \"{url}\"\nname = \"{name}\"\nformat = \"{format}\"\n{routing}\n")
}

async fn bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

async fn ids_received(server: &MockServer) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for body in bodies(server).await {
        *ids.entry(body["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    ids
}

/// Incoming Pending referrals `hours_left` before their 14-day deadline (negative: expired).
fn referrals_left(hours_left: &[i64]) -> Vec<Value> {
    let now = Utc::now();
    hours_left
        .iter()
        .enumerate()
        .map(|(i, h)| {
            sample::referral(
                i,
                now,
                Duration::days(14) - Duration::hours(*h),
                "New",
                "Pending",
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_thousand_pending_referrals_send_at_most_ten_messages_to_each_chat_sink() {
    let (slack, teams, json) = (receiver().await, receiver().await, receiver().await);
    // A 2-day window: every one of the 3,000 has crossed a threshold or expired.
    let extra = format!(
        "\n[alerts]\nresponse_window = \"2d\"\n{}{}{}",
        sink(&slack.uri(), "channel", "slack", ""),
        sink(&teams.uri(), "teams", "teams", ""),
        sink(&json.uri(), "siem", "json", "")
    );
    let env = TestEnv::with_extra(&extra).await;
    env.sim
        .put_referrals(sample::pending_inbox(3000, Utc::now()));

    for _ in 0..2 {
        let out = env.run(&["sync"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }

    let alerts: i64 = env.query("SELECT COUNT(*) FROM alerts", |r| r.get(0));
    assert_eq!(alerts, 3000, "one alert per referral");
    for (name, chat) in [("slack", &slack), ("teams", &teams)] {
        let messages = bodies(chat).await;
        assert!(
            (1..=10).contains(&messages.len()),
            "{name} got {} messages",
            messages.len()
        );
        let digest = messages
            .iter()
            .map(Value::to_string)
            .find(|t| t.contains("3000 alerts in one cycle"))
            .unwrap_or_else(|| panic!("{name} got no digest"));
        assert!(digest.contains("alerts list"), "{digest}");
        assert!(digest.contains("referral_expired"), "{digest}");
        assert!(digest.contains("partner.microsoft.com"), "links: {digest}");
    }
    let ids = ids_received(&json).await;
    assert_eq!(ids.len(), 3000, "the JSON sink got every alert");
    assert!(ids.values().all(|n| *n == 1), "each exactly once");

    let list = env
        .run(&["alerts", "list", "--limit", "5000", "--json"])
        .await;
    let rows: Vec<Value> = serde_json::from_str(&stdout(&list)).unwrap();
    let referrals: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["referral_id"].as_str().unwrap())
        .collect();
    assert_eq!(referrals.len(), 3000, "every referral in alerts list");
    let pending = stdout(&env.run(&["alerts", "list", "--pending"]).await);
    assert!(
        pending.contains("no alerts"),
        "a digest delivers: {pending}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_few_alerts_still_reach_a_chat_sink_one_message_each() {
    let slack = receiver().await;
    let env = TestEnv::with_extra(&sink(&slack.uri(), "channel", "slack", "")).await;
    env.sim.put_referrals(referrals_left(&[70, 20, 3, -2]));
    assert!(env.run(&["sync"]).await.status.success());
    let messages = bodies(&slack).await;
    assert_eq!(messages.len(), 4, "no digest for four alerts");
    assert!(messages
        .iter()
        .all(|m| !m.to_string().contains("in one cycle")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_with_thresholds_4h_gets_the_4h_alerts_and_nothing_else_of_that_kind_across_restarts(
) {
    let (oncall, channel) = (receiver().await, receiver().await);
    let extra = format!(
        "{}{}",
        sink(&oncall.uri(), "oncall", "json", "thresholds = [\"4h\"]"),
        sink(
            &channel.uri(),
            "channel",
            "json",
            "kinds = [\"referral_expiring\", \"referral_expired\"]\nthresholds = [\"72h\"]"
        )
    );
    let env = TestEnv::with_extra(&extra).await;
    env.sim.put_referrals(referrals_left(&[70, 20, 3, -2]));
    let r = sample::referral_id;

    assert!(env.run(&["sync"]).await.status.success());
    let got: Vec<String> = ids_received(&oncall).await.into_keys().collect();
    assert_eq!(
        got,
        vec![
            format!("referral_expired:{}", r(3)),
            format!("referral_expiring:{}:4h", r(2)),
        ],
        "the 4 h alert and other kinds, no 72 h or 24 h"
    );
    let got: Vec<String> = ids_received(&channel).await.into_keys().collect();
    assert_eq!(
        got,
        vec![
            format!("referral_expired:{}", r(3)),
            format!("referral_expiring:{}:72h", r(0)),
            // First seen past 72 h (spec §3): the alert that skipped it reaches the channel.
            format!("referral_expiring:{}:24h", r(1)),
            format!("referral_expiring:{}:4h", r(2)),
        ]
    );
    // Nothing is "undelivered" for a sink that does not take it.
    let pending = stdout(&env.run(&["alerts", "list", "--pending"]).await);
    assert!(pending.contains("no alerts"), "{pending}");

    // Time passes (the 20 h referral now has 3 h left), over a restart of the binary.
    env.sim
        .put_referrals(referrals_left(&[70, 3]).into_iter().skip(1).map(|mut v| {
            v["id"] = Value::from(r(1));
            // A newer snapshot than the stored one.
            v["updatedDateTime"] = Value::from(Utc::now().to_rfc3339());
            v
        }));
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.cli(&["sync"]).await.status.success());
    let got = ids_received(&oncall).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got.get(&format!("referral_expiring:{}:4h", r(1))), Some(&1));
    assert!(got.values().all(|n| *n == 1), "exactly once: {got:?}");
    assert!(
        !got.keys()
            .any(|k| k.ends_with(":24h") || k.ends_with(":72h")),
        "{got:?}"
    );
    let got = ids_received(&channel).await;
    assert_eq!(
        got.keys().filter(|k| k.contains(&r(0))).count(),
        1,
        "the referral the channel had at 72 h gets nothing more there: {got:?}"
    );
    assert_eq!(
        got.get(&format!("referral_expiring:{}:4h", r(1))),
        Some(&1),
        "its 72 h never alerted, the referral's 4 h alert reaches the channel: {got:?}"
    );
    assert_eq!(got.len(), 5, "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_narrowed_while_it_was_down_gets_only_what_it_takes_now() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/hook");
    let env = TestEnv::with_extra(&sink(&url, "oncall", "json", "")).await;
    env.sim.put_referrals(referrals_left(&[70, 20, 3]));
    assert!(env.run(&["sync"]).await.status.success());
    let pending = stdout(&env.run(&["alerts", "list", "--pending"]).await);
    assert_eq!(
        pending.matches("webhook:oncall: pending").count(),
        3,
        "{pending}"
    );

    // The operator narrows the sink to 4 h; the receiver comes back.
    env.write_config(&sink(&url, "oncall", "json", "thresholds = [\"4h\"]"));
    let server = MockServer::builder()
        .listener(std::net::TcpListener::bind(addr).unwrap())
        .start()
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    assert!(env.run(&["sync"]).await.status.success());
    let got: Vec<String> = ids_received(&server).await.into_keys().collect();
    assert_eq!(
        got,
        vec![format!("referral_expiring:{}:4h", sample::referral_id(2))]
    );
    let pending = stdout(&env.run(&["alerts", "list", "--pending"]).await);
    assert!(pending.contains("no alerts"), "{pending}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_rejects_an_unknown_kind_or_threshold_naming_the_key() {
    let env = TestEnv::new().await;
    for (routing, key, word) in [
        (
            "kinds = [\"referral_expird\"]",
            "alerts.webhook[0].kinds",
            "referral_expird",
        ),
        (
            "thresholds = [\"12h\"]",
            "alerts.webhook[0].thresholds",
            "12h",
        ),
    ] {
        env.write_config(&sink("https://hooks.example/x", "x", "json", routing));
        let out = env.run(&["check-config"]).await;
        assert_eq!(out.status.code(), Some(78), "{routing}");
        let text = stderr(&out);
        assert!(text.contains(key) && text.contains(word), "{text}");
    }
    env.write_config("\n[[alerts.command]]\nargv = [\"true\"]\nthresholds = [\"1h\"]\n");
    let out = env.run(&["check-config"]).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("alerts.command[0].thresholds"),
        "{}",
        stderr(&out)
    );
    // A threshold written another way is the same threshold.
    env.write_config(&sink(
        "https://hooks.example/x",
        "x",
        "json",
        "thresholds = [\"240m\"]\nmin_severity = \"critical\"",
    ));
    let out = env.run(&["check-config"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("min_severity = \"critical\""),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_test_shows_what_each_sink_gets() {
    let server = receiver().await;
    let extra = format!(
        "{}{}{}",
        sink(&server.uri(), "channel", "slack", "thresholds = [\"72h\"]"),
        sink(
            &server.uri(),
            "oncall",
            "json",
            "kinds = [\"referral_expiring\"]\nthresholds = [\"4h\"]"
        ),
        sink(
            &server.uri(),
            "operations",
            "json",
            "kinds = [\"sync_unhealthy\", \"sync_recovered\", \"action_failed\"]"
        ),
    );
    let env = TestEnv::with_extra(&extra).await;
    let out = env.run(&["alerts", "test"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // Lines are wrapped to 80 columns; compare the words.
    let text = stdout(&out)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        text.contains("ok webhook:oncall gets: referral_expiring at 4h ok"),
        "{text}"
    );
    assert!(
        text.contains("webhook:channel gets: referral_expiring at 72h (24h, 4h if 72h was skipped); referral_expired;"),
        "{text}"
    );
    assert!(
        text.contains("gets: sync_unhealthy; sync_recovered; action_failed"),
        "{text}"
    );
    assert!(
        !text.contains("warning"),
        "the ladder loses no threshold: {text}"
    );
    assert_eq!(bodies(&server).await.len(), 3, "a test alert to each sink");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_keeps_one_line_per_alert_and_sums_up_a_flood_in_one_line() {
    let env = TestEnv::with_extra("\n[alerts]\nresponse_window = \"2d\"\n").await;
    env.sim.put_referrals(sample::pending_inbox(40, Utc::now()));
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert_eq!(log.matches("ALERT: ").count(), 40, "{log}");
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ALERT SUMMARY"))
        .collect();
    assert_eq!(summaries.len(), 1, "{log}");
    assert!(
        summaries[0].contains("40 alerts raised in this cycle")
            && summaries[0].contains("40 incoming referrals await an answer"),
        "{}",
        summaries[0]
    );
    // A quiet cycle says nothing more.
    let again = stderr(&env.cli(&["sync"]).await);
    assert!(!again.contains("ALERT SUMMARY"), "{again}");
}

async fn alerts_json(env: &TestEnv) -> Vec<Value> {
    let out = env.run(&["alerts", "list", "--json"]).await;
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// The deliveries `alerts list --json` shows for one alert: sink → state.
fn deliveries_of(rows: &[Value], id: &str) -> BTreeMap<String, String> {
    let row = rows
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no alert {id} in {rows:?}"));
    row["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d[0].as_str().unwrap().into(), d[1].as_str().unwrap().into()))
        .collect()
}

/// Spec §3 (issue 28, item 1): the README's ladder loses no referral that arrives late. First
/// seen 19 h 57 min before its deadline, the referral raises only its 24 h alert; the channel
/// (72 h, skipped) gets it at once, on call (4 h) gets the 4 h alert later.
#[tokio::test(flavor = "multi_thread")]
async fn a_referral_first_seen_past_a_sinks_threshold_still_reaches_it() {
    let (channel, oncall) = (receiver().await, receiver().await);
    let extra = format!(
        "{}{}",
        sink(&channel.uri(), "channel", "slack", "thresholds = [\"72h\"]"),
        sink(&oncall.uri(), "oncall", "json", "thresholds = [\"4h\"]")
    );
    let env = TestEnv::with_extra(&extra).await;
    let left = |minutes: i64| {
        sample::referral(
            0,
            Utc::now(),
            Duration::days(14) - Duration::minutes(minutes),
            "New",
            "Pending",
        )
    };
    let id = sample::referral_id(0);
    env.sim.put_referrals(vec![left(19 * 60 + 57)]);
    assert!(env.run(&["sync"]).await.status.success());

    let rows = alerts_json(&env).await;
    let day = format!("referral_expiring:{id}:24h");
    assert_eq!(
        deliveries_of(&rows, &day),
        BTreeMap::from([("webhook:channel".to_string(), "delivered".to_string())]),
        "the channel's 72 h was skipped: it gets the 24 h alert at once"
    );
    assert_eq!(bodies(&channel).await.len(), 1);
    assert!(bodies(&oncall).await.is_empty(), "on call waits for 4 h");

    // Later: 3 h left.
    let mut later = left(3 * 60);
    later["updatedDateTime"] = Value::from(Utc::now().to_rfc3339());
    env.sim.put_referrals(vec![later]);
    assert!(env.run(&["sync"]).await.status.success());
    let rows = alerts_json(&env).await;
    let four = format!("referral_expiring:{id}:4h");
    let got = deliveries_of(&rows, &four);
    assert_eq!(
        got.get("webhook:oncall").map(String::as_str),
        Some("delivered")
    );
    // The channel's 72 h still got no alert of its own, so the 4 h one reaches it too.
    assert_eq!(
        got.get("webhook:channel").map(String::as_str),
        Some("delivered")
    );
    assert_eq!(
        ids_received(&oncall).await.into_keys().collect::<Vec<_>>(),
        vec![four]
    );
}

/// Issue 28: `check-config` shows what reaches each sink, and both it and `alerts test` warn
/// when a threshold's alerts reach no webhook or command sink.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_and_alerts_test_warn_about_a_threshold_no_sink_gets() {
    let server = receiver().await;
    let oncall = sink(&server.uri(), "oncall", "json", "thresholds = [\"4h\"]");
    let health = sink(&server.uri(), "ops", "json", "kinds = [\"sync_unhealthy\"]");
    let env = TestEnv::with_extra(&format!("{oncall}{health}")).await;
    // Wrapped comment lines, compared word by word without their `#`.
    let words = |s: String| {
        s.split_whitespace()
            .filter(|w| *w != "#")
            .collect::<Vec<_>>()
            .join(" ")
    };
    let out = env.run(&["check-config"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = words(stdout(&out));
    assert!(
        text.contains("webhook:oncall referral_expiring at 4h; referral_expired;"),
        "{text}"
    );
    assert!(
        text.contains("webhook:ops sync_unhealthy warning"),
        "{text}"
    );
    let warning =
        "warning: referral_expiring at 72h, 24h reaches no webhook or command sink, only the log";
    assert!(text.contains(warning), "{text}");
    let out = env.run(&["alerts", "test"]).await;
    assert!(words(stdout(&out)).contains(warning), "{}", stdout(&out));

    // The README's ladder: nothing lost, no warning.
    let channel = sink(&server.uri(), "channel", "slack", "thresholds = [\"72h\"]");
    env.write_config(&format!("{channel}{oncall}"));
    let out = env.run(&["check-config"]).await;
    let text = words(stdout(&out));
    assert!(
        text.contains("webhook:channel referral_expiring at 72h (24h, 4h if 72h was skipped)"),
        "{text}"
    );
    assert!(!text.contains("warning"), "{text}");
}
