//! The Microsoft client against wiremock (exact wire behaviour) and the simulator (API rules).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cosell_sync::http::{with_retry, ApiError, RateLimiter, RetryPolicy};
use cosell_sync::microsoft::{odata, MicrosoftClient, PageRequest, PatchOp, TokenSource};
use cosell_sync::sim::{sample, Fault};
use serde_json::json;
use wiremock::matchers::{header, header_exists, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::TestEnv;

const TENANT: &str = "t.example";

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_retries: 4,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_total: Duration::from_secs(10),
        max_retry_after: Duration::from_secs(5),
    }
}

/// A client against a wiremock server that grants tokens.
async fn wiremock_client(server: &MockServer, dir: &std::path::Path) -> MicrosoftClient {
    Mock::given(method("POST"))
        .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer", "expires_in": "3599", "access_token": "at-1", "refresh_token": "rt-2"
        })))
        .mount(server)
        .await;
    let http = cosell_sync::http::client(Duration::from_secs(5), Duration::from_secs(2));
    let tokens = TokenSource::new(
        http.clone(),
        &server.uri(),
        TENANT,
        "client".into(),
        Some("secret".to_string().into()),
        Some("rt-1".to_string().into()),
        dir.join("token"),
    )
    .unwrap();
    MicrosoftClient::new(
        http,
        &server.uri(),
        Arc::new(tokens),
        Arc::new(RateLimiter::new(1000.0)),
    )
    .unwrap()
}

fn inbox() -> PageRequest {
    PageRequest::Query {
        filter: "direction eq 'Incoming' and substatus eq 'Pending'".into(),
        orderby: "createdDateTime desc".into(),
        top: 100,
    }
}

fn page_body(ids: &[&str]) -> serde_json::Value {
    let now = chrono::Utc::now();
    let value: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut r = sample::referral(i, now, chrono::Duration::hours(1), "New", "Pending");
            r["id"] = json!(id);
            r
        })
        .collect();
    json!({"value": value})
}

#[tokio::test]
async fn sends_odata_query_headers_and_bearer_token() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = wiremock_client(&server, dir.path()).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/engagements/referrals"))
        .and(query_param(
            "$filter",
            "direction eq 'Incoming' and substatus eq 'Pending'",
        ))
        .and(query_param("$orderby", "createdDateTime desc"))
        .and(query_param("$top", "100"))
        .and(header("authorization", "Bearer at-1"))
        .and(header_exists("client-request-id"))
        .and(header_exists("MS-CorrelationId"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("request-id", "rid-1")
                .set_body_json(page_body(&["a", "b"])),
        )
        .expect(1)
        .mount(&server)
        .await;
    let page = client.list_page(&inbox()).await.unwrap();
    assert_eq!(page.referrals.len(), 2);
    assert_eq!(page.request_id.as_deref(), Some("rid-1"));
    assert!(page.next_link.is_none());
    // The grant's rotated refresh token was persisted, private.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("token"))
            .unwrap()
            .trim(),
        "rt-2"
    );
}

#[tokio::test]
async fn honours_retry_after_on_429_then_succeeds() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = wiremock_client(&server, dir.path()).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/engagements/referrals"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .set_body_json(json!({"statusCode": 429, "message": "Rate limit is exceeded. Try again in 1 seconds."})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/engagements/referrals"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page_body(&["a"])))
        .mount(&server)
        .await;
    let started = Instant::now();
    let request = inbox();
    let page = with_retry(&fast_policy(), "list", || client.list_page(&request))
        .await
        .unwrap();
    assert_eq!(page.referrals.len(), 1);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}, less than Retry-After",
        started.elapsed()
    );
}

#[tokio::test]
async fn retries_5xx_then_succeeds_and_never_retries_400() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = wiremock_client(&server, dir.path()).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/engagements/referrals/r-503"))
        .respond_with(
            ResponseTemplate::new(503).set_body_json(
                json!({"error": {"code": "serviceNotAvailable", "message": "busy"}}),
            ),
        )
        .up_to_n_times(2)
        .mount(&server)
        .await;
    let mut good = page_body(&["r-503"])["value"][0].clone();
    good["id"] = json!("r-503");
    Mock::given(method("GET"))
        .and(path("/v1.0/engagements/referrals/r-503"))
        .respond_with(ResponseTemplate::new(200).set_body_json(good))
        .mount(&server)
        .await;
    let got = with_retry(&fast_policy(), "get", || client.get_referral("r-503"))
        .await
        .unwrap();
    assert_eq!(got.referral.id, "r-503");

    Mock::given(method("GET"))
        .and(path("/v1.0/engagements/referrals/r-400"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"error": {"code": "invalidRequest", "message": "nope"}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let err = with_retry(&fast_policy(), "get", || client.get_referral("r-400"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(!err.is_transient());
    assert!(err.to_string().contains("invalidRequest"), "{err}");
}

#[tokio::test]
async fn a_malformed_body_is_a_clear_transient_error() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = wiremock_client(&server, dir.path()).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/engagements/referrals"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"value\": [{\"id\": \"tru"))
        .mount(&server)
        .await;
    let err = client.list_page(&inbox()).await.unwrap_err();
    assert!(matches!(err, ApiError::Malformed { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("malformed response body"), "{err}");
}

#[tokio::test]
async fn patch_sends_json_patch_with_the_etag_verbatim() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let client = wiremock_client(&server, dir.path()).await;
    let etag = "\"84001c9d-0000-0100-0000-6225a63e0000\"";
    Mock::given(method("PATCH"))
        .and(path("/v1.0/engagements/referrals/r1"))
        .and(header("If-Match", etag))
        .and(header("content-type", "application/json"))
        .and(wiremock::matchers::body_json(json!([
            {"op": "replace", "path": "/externalReferenceId", "value": "partners/1/leads/2"}
        ])))
        .respond_with(ResponseTemplate::new(204).insert_header("request-id", "rid-p"))
        .expect(1)
        .mount(&server)
        .await;
    let outcome = client
        .patch_referral(
            "r1",
            &[PatchOp::replace(
                "/externalReferenceId",
                "partners/1/leads/2",
            )],
            Some(etag),
        )
        .await
        .unwrap();
    assert_eq!(outcome.request_id.as_deref(), Some("rid-p"));
}

#[tokio::test]
async fn pages_through_the_simulator_following_next_links() {
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::pending_inbox(250, chrono::Utc::now()));
    let client = env.client(&env.dir.path().join("token"));
    let mut request = inbox();
    let mut seen = std::collections::HashSet::new();
    let mut pages = 0;
    loop {
        let page = client.list_page(&request).await.unwrap();
        pages += 1;
        for r in &page.referrals {
            assert!(
                seen.insert(r.referral.id.clone()),
                "duplicate {}",
                r.referral.id
            );
        }
        match page.next_link {
            Some(link) => {
                assert!(
                    link.contains("/v1.0/referrals?$skiptoken="),
                    "documented shape: {link}"
                );
                request = PageRequest::Next(link);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
}

#[tokio::test]
async fn filter_literals_are_escaped() {
    let env = TestEnv::new().await;
    // Sample 9 is "O'Brien & Daughters".
    env.sim
        .put_referrals(sample::pending_inbox(20, chrono::Utc::now()));
    let client = env.client(&env.dir.path().join("token"));
    let page = client
        .list_page(&PageRequest::Query {
            filter: odata::eq("customerProfile/name", "O'Brien & Daughters"),
            orderby: String::new(),
            top: 100,
        })
        .await
        .unwrap();
    assert_eq!(page.referrals.len(), 2, "samples 9 and 19");
    assert!(page
        .referrals
        .iter()
        .all(|r| r.referral.customer_name() == Some("O'Brien & Daughters")));
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_retries() {
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::pending_inbox(3, chrono::Utc::now()));
    let client = env.client(&env.dir.path().join("token"));
    client.list_page(&inbox()).await.unwrap();
    assert_eq!(env.sim.counter("token"), 1);
    env.sim.revoke_access_tokens();
    let page = client.list_page(&inbox()).await.unwrap();
    assert_eq!(page.referrals.len(), 3);
    assert_eq!(
        env.sim.counter("token"),
        2,
        "exactly one refresh after the 401"
    );
}

#[tokio::test]
async fn a_revoked_refresh_token_is_a_permanent_auth_error() {
    let env = TestEnv::new().await;
    env.sim.revoke_refresh_tokens();
    let client = env.client(&env.dir.path().join("token"));
    let err = client.list_page(&inbox()).await.unwrap_err();
    assert!(err.is_auth() && !err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("invalid_grant"), "{err}");
    assert!(
        err.to_string().contains("cosell-sync auth microsoft"),
        "{err}"
    );
}

#[tokio::test]
async fn one_bad_referral_does_not_fail_its_page() {
    let env = TestEnv::new().await;
    let mut referrals = sample::pending_inbox(5, chrono::Utc::now());
    referrals[2]["createdDateTime"] = json!("last tuesday");
    env.sim.put_referrals(referrals);
    let client = env.client(&env.dir.path().join("token"));
    let page = client.list_page(&inbox()).await.unwrap();
    assert_eq!(page.referrals.len(), 4);
    assert_eq!(page.rejected.len(), 1);
    assert_eq!(
        page.rejected[0].id.as_deref(),
        Some(sample::referral_id(2).as_str())
    );
}

#[tokio::test]
async fn simulator_patch_enforces_etags_and_closed_is_terminal() {
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::pending_inbox(1, chrono::Utc::now()));
    let id = sample::referral_id(0);
    let client = env.client(&env.dir.path().join("token"));
    let current = client.get_referral(&id).await.unwrap();
    let stale = err_status(
        client
            .patch_referral(
                &id,
                &[PatchOp::replace("/externalReferenceId", "x")],
                Some("\"old\""),
            )
            .await,
    );
    assert_eq!(stale, 412);
    let close = [
        PatchOp::replace("/status", "Closed"),
        PatchOp::replace("/substatus", "Lost"),
        PatchOp::replace("/statusReason", "lost in Google"),
    ];
    client
        .patch_referral(&id, &close, current.referral.e_tag.as_deref())
        .await
        .unwrap();
    let again = err_status(
        client
            .patch_referral(&id, &[PatchOp::replace("/externalReferenceId", "y")], None)
            .await,
    );
    assert_eq!(again, 400, "Closed is terminal");
    let bad_pair = {
        env.sim
            .put_referrals(sample::pending_inbox(2, chrono::Utc::now()));
        err_status(
            client
                .patch_referral(
                    &sample::referral_id(1),
                    &[PatchOp::replace("/substatus", "Won")],
                    None,
                )
                .await,
        )
    };
    assert_eq!(bad_pair, 400, "New/Won is not a valid pair");
}

#[tokio::test]
async fn dropped_connections_are_transient_transport_errors() {
    let env = TestEnv::new().await;
    env.sim
        .put_referrals(sample::pending_inbox(2, chrono::Utc::now()));
    let client = env.client(&env.dir.path().join("token"));
    client.list_page(&inbox()).await.unwrap();
    env.sim.script_faults([Fault::Drop]);
    let err = client.list_page(&inbox()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Transport {
                maybe_sent: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
}

fn err_status<T: std::fmt::Debug>(r: Result<T, ApiError>) -> u16 {
    r.unwrap_err().status().expect("an HTTP status")
}
