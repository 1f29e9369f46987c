//! Issue 9: hostile servers and absurd numbers. A small hostile Partner Center (wiremock on
//! 127.0.0.1) in front of the Google simulator, and generated hostile inputs for the page
//! parser and the `expires_in` / `Retry-After` handling.

use std::collections::BTreeSet;
use std::time::Duration;

use cosell_sync::http::{parse_retry_after, MAX_RETRY_AFTER};
use cosell_sync::microsoft::auth::{token_lifetime, MAX_TOKEN_LIFETIME};
use cosell_sync::microsoft::model::parse_page;
use cosell_sync::sim::sample;
use cosell_sync::sync::push::Schedule;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::{stderr, stdout, TestEnv};

/// Points the config's Partner Center (API and token authority) at a hostile server that
/// grants tokens; the Google side stays the simulator.
async fn hostile_microsoft(env: &TestEnv) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex("/oauth2/v2.0/token$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer", "expires_in": 3599, "access_token": "hostile-at", "refresh_token": "rt-next"
        })))
        .mount(&server)
        .await;
    let sim = env.sim.base_url();
    env.edit_config(|c| {
        c.replacen(
            &format!("api_base = \"{sim}\"\nauthority = \"{sim}\""),
            &format!("api_base = \"{0}\"\nauthority = \"{0}\"", server.uri()),
            1,
        )
    });
    server
}

fn good(i: usize) -> Value {
    let mut r = sample::referral(
        i,
        chrono::Utc::now(),
        chrono::Duration::hours(2),
        "New",
        "Pending",
    );
    r["id"] = json!(format!("good-{i}"));
    r
}

async fn serve_list(server: &MockServer, body: String) {
    Mock::given(method("GET"))
        .and(path("/v1.0/engagements/referrals"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .mount(server)
        .await;
}

async fn list_calls(server: &MockServer) -> usize {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "GET")
        .count()
}

fn deep(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

/// Finding 3: one unreadable item is rejected by id; the five good ones are forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_items_are_rejected_and_the_rest_forwarded() {
    let env = TestEnv::with_google("").await;
    let server = hostile_microsoft(&env).await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let goods: Vec<String> = (0..5).map(|i| good(i).to_string()).collect();
    let body = format!(
        r#"{{"value": [{}, {{"id": "bad-number", "x": 1e400}}, {}, {{"id": "bad-deep", "x": {}}}, {}, {{"id": "bad-surrogate", "x": "\ud800"}}, {}, {}]}}"#,
        goods[0],
        goods[1],
        deep(300),
        goods[2],
        goods[3],
        goods[4]
    );
    serve_list(&server, body).await;
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let leads: BTreeSet<String> = env
        .sim
        .google_leads()
        .iter()
        .map(|l| l["externalSystemId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        leads,
        (0..5).map(|i| format!("good-{i}")).collect::<BTreeSet<_>>()
    );
    let conn = rusqlite::Connection::open(env.state_db()).unwrap();
    let mut stmt = conn
        .prepare("SELECT record_id, error FROM rejected_records ORDER BY record_id")
        .unwrap();
    let rejected: Vec<(Option<String>, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let ids: Vec<_> = rejected.iter().map(|r| r.0.as_deref()).collect();
    assert_eq!(
        ids,
        [Some("bad-deep"), Some("bad-number"), Some("bad-surrogate")]
    );
    assert!(rejected.iter().all(|r| r.1.contains("unreadable JSON")));
    let status = stdout(&env.cli(&["status"]).await);
    assert!(status.contains("3 records could not be read"), "{status}");
}

/// Finding 7: an answer body beyond the cap is refused, not read into memory.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_answer_is_not_read() {
    let env = TestEnv::with_google("").await;
    let server = hostile_microsoft(&env).await;
    let note = "x".repeat(cosell_sync::http::MAX_BODY_BYTES + 1024);
    let mut big = good(1);
    big["details"]["notes"] = json!(note);
    serve_list(&server, json!({ "value": [big] }).to_string()).await;
    let out = env.cli(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "larger than {} bytes",
            cosell_sync::http::MAX_BODY_BYTES
        )),
        "{}",
        stderr(&out)
    );
    assert!(env.sim.google_leads().is_empty());
}

/// Finding 4: a nextLink that repeats forever fails the query with a clear error, at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeating_next_link_fails_the_query() {
    let env = TestEnv::with_google("").await;
    let server = hostile_microsoft(&env).await;
    let body = json!({
        "value": [good(1)],
        "@odata.nextLink": format!("{}/v1.0/engagements/referrals?$skiptoken=again", server.uri()),
    });
    serve_list(&server, body.to_string()).await;
    let out = tokio::time::timeout(Duration::from_secs(60), env.cli(&["sync"]))
        .await
        .expect("the cycle ends");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("repeats a page already read"),
        "{}",
        stderr(&out)
    );
    assert!(
        list_calls(&server).await <= 3,
        "{}",
        list_calls(&server).await
    );
}

/// Finding 5: the bearer token never goes to another origin a nextLink names.
#[tokio::test(flavor = "multi_thread")]
async fn a_next_link_to_another_origin_is_refused_and_gets_no_token() {
    let env = TestEnv::with_google("").await;
    let server = hostile_microsoft(&env).await;
    let elsewhere = MockServer::start().await;
    let body = json!({
        "value": [good(1)],
        "@odata.nextLink": format!("{}/v1.0/referrals?$skiptoken=2", elsewhere.uri()),
    });
    serve_list(&server, body.to_string()).await;
    let out = env.cli(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("another origin") && err.contains(&elsewhere.uri()),
        "{err}"
    );
    assert!(
        elsewhere.received_requests().await.unwrap().is_empty(),
        "the other host was contacted"
    );
}

/// Finding 4: a PATCH that always answers 412 re-plans once per cycle, then waits.
#[tokio::test(flavor = "multi_thread")]
async fn an_always_412_patch_replans_once_per_cycle() {
    let env = TestEnv::with_google("").await;
    let server = hostile_microsoft(&env).await;
    let referral = good(7);
    serve_list(&server, json!({ "value": [referral.clone()] }).to_string()).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/engagements/referrals/good-7"))
        .respond_with(ResponseTemplate::new(200).set_body_json(referral))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(412).set_body_json(json!({
            "error": {"code": "preconditionFailed", "message": "The resource has been modified."}
        })))
        .mount(&server)
        .await;
    let patches = |requests: Vec<Request>| {
        requests
            .iter()
            .filter(|r| r.method.as_str() == "PATCH")
            .count()
    };
    for cycle in 1..=2 {
        let out = tokio::time::timeout(Duration::from_secs(60), env.cli(&["sync"]))
            .await
            .expect("the cycle ends");
        assert!(out.status.success(), "{}", stderr(&out));
        let sent = patches(server.received_requests().await.unwrap());
        assert_eq!(
            sent,
            2 * cycle,
            "a PATCH and one re-planned PATCH per cycle"
        );
    }
    assert_eq!(env.sim.google_leads().len(), 1);
}

/// Finding 5: an alert webhook's redirect to another host is not followed (it would carry
/// the secret header there).
#[tokio::test(flavor = "multi_thread")]
async fn webhook_redirects_to_another_origin_are_not_followed() {
    let elsewhere = MockServer::start().await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("Location", format!("{}/steal", elsewhere.uri()).as_str()),
        )
        .mount(&hook)
        .await;
    let env = TestEnv::with_extra(&format!(
        "\n[[alerts.webhook]]\nurl = \"{}/hook\"\nformat = \"json\"\nheaders = {{ X-Api-Key = \"hook-secret\" }}\n",
        hook.uri()
    ))
    .await;
    let out = env.cli(&["alerts", "test"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("HTTP 307"), "{}", stdout(&out));
    assert!(elsewhere.received_requests().await.unwrap().is_empty());
}

/// Finding 2: `Retry-After: 10000000000000` on a lead create is clamped, never a panic.
#[tokio::test(flavor = "multi_thread")]
async fn an_absurd_retry_after_on_a_create_is_clamped() {
    let env = TestEnv::with_google("").await;
    env.sim.put_referrals(vec![good(3)]);
    env.sim.answer_next_create_429(10_000_000_000_000);
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let (state, next): (String, String) = env.query(
        "SELECT state, next_attempt_at FROM outbox WHERE kind = 'create_lead'",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(state, "pending");
    let next = cosell_sync::microsoft::model::parse_timestamp(&next).unwrap();
    let ceiling = chrono::Utc::now() + chrono::Duration::from_std(MAX_RETRY_AFTER).unwrap();
    assert!(next <= ceiling, "{next} is beyond the Retry-After ceiling");
    assert!(env.cli(&["status"]).await.status.success());
}

/// Finding 2: a token answer with `expires_in` = 10^19 is clamped, never a panic.
#[tokio::test]
async fn an_absurd_token_lifetime_is_clamped() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"token_type":"Bearer","expires_in":10000000000000000000,"access_token":"at","refresh_token":"rt"}"#,
            "application/json",
        ))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let http = cosell_sync::http::client(Duration::from_secs(5), Duration::from_secs(2));
    let tokens = cosell_sync::microsoft::TokenSource::new(
        http,
        &server.uri(),
        "t.example",
        "client".into(),
        Some("secret".to_string().into()),
        Some("rt-1".to_string().into()),
        dir.path().join("token"),
    )
    .unwrap();
    tokens.access_token().await.expect("a token, not a panic");
    tokens.access_token().await.expect("cached");
}

/// Finding 7: an unusable `dealValue` is reported by field (and alerted once), never sent.
#[tokio::test(flavor = "multi_thread")]
async fn unusable_deal_values_are_rejected_by_field_and_alerted_once() {
    let env = TestEnv::with_google("").await;
    let mut referrals = vec![good(0)];
    for (i, value) in [json!("NaN"), json!("inf"), json!("1e309"), json!(-5)]
        .into_iter()
        .enumerate()
    {
        let mut r = good(10 + i);
        r["details"]["dealValue"] = value;
        referrals.push(r);
    }
    env.sim.put_referrals(referrals);
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let sent: Vec<Value> = env.sim.google_leads();
    assert_eq!(sent.len(), 1, "only the good referral becomes a lead");
    assert!(sent[0]["partnerAnnualContractValue"].is_number());
    let blocked: i64 = env.query(
        "SELECT COUNT(*) FROM forward_blocked WHERE reason LIKE 'details.dealValue%'",
        |r| r.get(0),
    );
    assert_eq!(blocked, 4);
    let alerts = || {
        env.query(
            "SELECT COUNT(*) FROM alerts WHERE kind = 'forward_blocked'",
            |r| r.get::<_, i64>(0),
        )
    };
    assert_eq!(alerts(), 4);
    assert!(env.cli(&["sync"]).await.status.success());
    assert_eq!(alerts(), 4, "once per referral and reason");
}

/// Generated hostile inputs (≥ 1,000 each): the page parser, `expires_in` and `Retry-After`
/// never panic, and their answers stay within bounds.
#[test]
fn generated_hostile_inputs_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0x1550_e009);
    let atoms = [
        "1e400",
        "-1e400",
        "\"\\ud800\"",
        "\"\\udfff\\ud800\"",
        "18446744073709551616",
        "NaN",
        "{}",
        "[]",
        "null",
        "\"x\"",
        "true",
        "{\"id\": 5}",
        "{\"id\": \"a\", \"createdDateTime\": \"2026-01-01T00:00:00Z\"}",
        "{\"id\": \"\\ud800\"}",
        "\"\u{0}\"",
    ];
    let mut pages = 0;
    for _ in 0..2000 {
        let n = rng.usize(0..6);
        let items: Vec<String> = (0..n)
            .map(|_| match rng.u8(0..4) {
                0 => deep(rng.usize(1..400)),
                1 => good(rng.usize(0..50)).to_string(),
                2 => format!(
                    "{{\"id\": \"i{}\", \"x\": {}}}",
                    rng.u32(..),
                    atoms[rng.usize(0..atoms.len())]
                ),
                _ => atoms[rng.usize(0..atoms.len())].to_string(),
            })
            .collect();
        let mut body = format!("{{\"value\": [{}]}}", items.join(","));
        if rng.u8(0..5) == 0 {
            // Cut or corrupt the envelope itself.
            let cut = rng.usize(0..=body.len());
            body = String::from_utf8_lossy(&body.as_bytes()[..cut]).into_owned();
        }
        if let Ok(page) = parse_page(&body) {
            assert_eq!(page.items.len(), n, "{body}");
            pages += 1;
        }
    }
    assert!(pages > 1000, "{pages} pages parsed");

    for _ in 0..2000 {
        let expires_in = match rng.u8(0..3) {
            0 => Some(rng.u64(..)),
            1 => Some(u64::MAX - rng.u64(0..10)),
            _ => None,
        };
        assert!(token_lifetime(expires_in) <= MAX_TOKEN_LIFETIME);
    }

    let schedule = Schedule {
        max_attempts: u32::MAX,
        min: Duration::from_secs(rng.u64(..)),
        max: Duration::MAX,
    };
    for _ in 0..2000 {
        let header = match rng.u8(0..6) {
            0 => rng.u64(..).to_string(),
            1 => format!("{}{}", rng.u64(..), rng.u64(..)),
            2 => "Fri, 31 Dec 9999 23:59:59 GMT".to_string(),
            3 => "Thu, 01 Jan 1970 00:00:00 GMT".to_string(),
            4 => format!("-{}", rng.u32(..)),
            _ => (0..rng.usize(0..12)).map(|_| rng.char(..)).collect(),
        };
        let body = format!("Try again in {} seconds.", rng.u64(..));
        let after = parse_retry_after(Some(&header), &body);
        assert!(after.is_none_or(|d| d <= MAX_RETRY_AFTER), "{header:?}");
        let delay = schedule.delay(rng.u32(..), after);
        assert!(delay >= after.unwrap_or(Duration::ZERO));
    }
}
