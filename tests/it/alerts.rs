//! Alerts end to end: a webhook receiver on 127.0.0.1 gets each alert once across runs and
//! restarts; failing and dead receivers never stop the sync and get their alerts later.

use std::collections::BTreeMap;

use cosell_sync::sim::sample;
use serde_json::Value;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{stderr, stdout, TestEnv};

fn webhook(url: &str, format: &str) -> String {
    format!("\n[[alerts.webhook]]\nurl = \"{url}\"\nformat = \"{format}\"\nheaders = {{ Authorization = \"Bearer hook-secret\" }}\n")
}

async fn ids_received(server: &MockServer) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for request in server.received_requests().await.unwrap_or_default() {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        *ids.entry(body["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn each_alert_reaches_the_webhook_exactly_once_across_runs() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let env = TestEnv::with_extra(&webhook(&format!("{}/hook", server.uri()), "json")).await;
    // 10 referrals, of which 3 are near a threshold and 1 is past its deadline.
    env.sim
        .put_referrals(sample::demo_set(10, chrono::Utc::now()));

    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let raised: usize = text
        .split("alerts: ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(text.contains(&format!("{raised} delivered")), "{text}");
    for _ in 0..3 {
        assert!(env.run(&["sync"]).await.status.success());
    }
    let ids = ids_received(&server).await;
    let expected: Vec<String> = vec![
        format!("referral_expired:{}", sample::referral_id(3)),
        format!("referral_expiring:{}:24h", sample::referral_id(1)),
        format!("referral_expiring:{}:4h", sample::referral_id(2)),
        format!("referral_expiring:{}:72h", sample::referral_id(0)),
    ];
    for id in &expected {
        assert!(ids.contains_key(id), "{id} not received: {ids:?}");
    }
    assert_eq!(ids.len(), raised, "every raised alert delivered");
    assert!(
        ids.values().all(|n| *n == 1),
        "each id exactly once: {ids:?}"
    );

    let first = &server.received_requests().await.unwrap()[0];
    assert_eq!(
        first.headers.get("authorization").unwrap(),
        "Bearer hook-secret"
    );
    let body: Value = serde_json::from_slice(&first.body).unwrap();
    for field in [
        "id",
        "kind",
        "severity",
        "referral_id",
        "customer",
        "deadline",
        "threshold",
        "remaining_hours",
        "message",
        "link",
    ] {
        assert!(body.get(field).is_some(), "field {field} in {body}");
    }

    let list = stdout(&env.run(&["alerts", "list"]).await);
    assert!(list.contains("delivered"), "{list}");
    let pending = stdout(&env.run(&["alerts", "list", "--pending"]).await);
    assert!(pending.contains("no alerts"), "{pending}");
    // The header secret is not in check-config's output.
    let config = stdout(&env.run(&["check-config"]).await);
    assert!(!config.contains("hook-secret"), "{config}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_failing_twice_gets_the_alert_on_the_third_try() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let env = TestEnv::with_extra(&webhook(&server.uri(), "json")).await;
    let mut referrals = sample::demo_set(5, chrono::Utc::now());
    referrals.truncate(3); // 72h, 24h and 4h left
    referrals.retain(|r| r["id"] == sample::referral_id(2));
    env.sim.put_referrals(referrals);
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3, "500, 500, then 200");
    let ids = ids_received(&server).await;
    assert_eq!(ids.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_receiver_does_not_stop_the_sync_and_gets_its_alerts_when_back() {
    // A port nobody listens on (yet).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let env = TestEnv::with_extra(&webhook(&format!("http://{addr}/hook"), "slack")).await;
    env.sim
        .put_referrals(sample::demo_set(6, chrono::Utc::now()));
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "the sync goes on: {}", stderr(&out));
    assert!(stdout(&out).contains("0 delivered"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("alert sink is failing"),
        "{}",
        stderr(&out)
    );
    let pending = stdout(&env.run(&["alerts", "list", "--pending"]).await);
    assert!(pending.contains("pending (1 attempts"), "{pending}");

    // The receiver comes back on the same port.
    let server = MockServer::builder()
        .listener(std::net::TcpListener::bind(addr).unwrap())
        .start()
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    assert!(env.run(&["sync"]).await.status.success());
    assert!(env.run(&["sync"]).await.status.success());
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 4, "each of the 4 alerts once");
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert!(
        body["text"].as_str().unwrap().contains("referral"),
        "slack format: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_sink_gets_the_json_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("alerts.jsonl");
    let extra = format!(
        "\n[[alerts.command]]\nargv = [\"sh\", \"-c\", \"cat >> {0}; echo >> {0}\"]\n",
        out_file.display()
    );
    let env = TestEnv::with_extra(&extra).await;
    let mut referrals = sample::demo_set(5, chrono::Utc::now());
    referrals.retain(|r| r["id"] == sample::referral_id(1));
    env.sim.put_referrals(referrals);
    assert!(env.run(&["sync"]).await.status.success());
    let text = std::fs::read_to_string(&out_file).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1);
    let alert: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(alert["kind"], "referral_expiring");
    assert_eq!(alert["threshold"], "24h");
    assert_eq!(alert["referral_id"], sample::referral_id(1).as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_test_reports_each_sink() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let env = TestEnv::with_extra(&format!(
        "{}{}",
        webhook(&server.uri(), "teams"),
        webhook(&format!("http://{dead_addr}/"), "json")
    ))
    .await;
    let out = env.run(&["alerts", "test"]).await;
    assert_eq!(out.status.code(), Some(1), "one sink failed");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("ok      webhook:{} #", server.uri())),
        "{text}"
    );
    assert!(
        text.contains(&format!("FAILED  webhook:http://{dead_addr} #")),
        "{text}"
    );
    let body: Value =
        serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(
        body["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_authentication_raises_sync_unhealthy_once_then_recovery() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let env = TestEnv::with_extra(&webhook(&server.uri(), "json")).await;
    env.sim.revoke_refresh_tokens();
    for _ in 0..3 {
        let out = env.run(&["sync"]).await;
        assert_eq!(out.status.code(), Some(1));
    }
    let ids = ids_received(&server).await;
    let unhealthy: Vec<_> = ids
        .keys()
        .filter(|k| k.starts_with("sync_unhealthy:"))
        .collect();
    assert_eq!(unhealthy.len(), 1, "once per episode: {ids:?}");
    let body: Value =
        serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("auth microsoft"),
        "{body}"
    );

    // The operator fixes the token: one recovery notice.
    let creds = env.sim.state.credentials.clone();
    std::fs::write(env.dir.path().join("microsoft-refresh-token"), "").unwrap();
    env.sim.revoke_refresh_tokens();
    env.sim.allow_refresh_token(&creds.refresh_token);
    assert!(env.run(&["sync"]).await.status.success());
    let ids = ids_received(&server).await;
    assert!(ids.keys().any(|k| k.ends_with(":recovered")), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sinks_error_body_is_kept_with_the_failed_delivery() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("invalid_blocks"))
        .mount(&server)
        .await;
    let env = TestEnv::with_extra(&webhook(&server.uri(), "slack")).await;
    env.sim
        .put_referrals(sample::demo_set(6, chrono::Utc::now()));
    assert!(env.run(&["sync"]).await.status.success());
    let pending = stdout(&env.run(&["alerts", "list", "--pending"]).await);
    assert!(pending.contains("HTTP 400: invalid_blocks"), "{pending}");
    let test = stdout(&env.run(&["alerts", "test"]).await);
    assert!(
        test.contains("FAILED") && test.contains("invalid_blocks"),
        "{test}"
    );
}

/// Issue 30's repro: a New referral 3 h from its deadline named like a markdown link, a Teams
/// sink and a Slack sink, `sync`: neither payload carries the stranger's link or a mention; the
/// JSON sink gets the name as it is (its reader's business).
#[tokio::test(flavor = "multi_thread")]
async fn a_referral_named_like_a_link_reaches_chat_without_the_link() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let sinks = ["teams", "slack", "json"]
        .map(|f| webhook(&format!("{}/{f}", server.uri()), f))
        .concat();
    let env = TestEnv::with_extra(&sinks).await;
    let now = chrono::Utc::now();
    let age = chrono::Duration::days(14) - chrono::Duration::hours(3);
    let mut referral = sample::referral(1, now, age, "New", "Pending");
    let name = "[Click to accept](https://evil.example/phish) <!channel> @here";
    referral["name"] = Value::String(name.into());
    referral["customerProfile"]["name"] = Value::String("evil.example\u{202E}".into());
    env.sim.put_referrals([referral]);
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut seen = BTreeMap::new();
    for request in server.received_requests().await.unwrap() {
        let body = String::from_utf8(request.body.clone()).unwrap();
        seen.insert(request.url.path().to_string(), body);
    }
    for chat in ["/teams", "/slack"] {
        let body = &seen[chat];
        for bad in [
            "[Click",
            "https://evil",
            "evil.example",
            "<!channel>",
            "@here",
            "\\u202e",
        ] {
            assert!(
                !body.to_lowercase().contains(bad),
                "{chat} carries {bad}: {body}"
            );
        }
        assert!(body.contains("Click to accept"), "{chat}: {body}");
    }
    let json: Value = serde_json::from_str(&seen["/json"]).unwrap();
    assert_eq!(json["referral_name"], name);
}
