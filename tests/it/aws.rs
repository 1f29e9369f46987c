//! The AWS inbox end to end (spec §8): engagement invitations pulled from the AWS simulator
//! (or a wiremock AWS for what the simulator does not do) into the store, alerted with
//! `source = "aws"`, shown in `status`, never forwarded to Google, and an authentication
//! refusal that names the IAM action while the Microsoft part of the cycle still runs.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use cosell_sync::sim::sample;
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{aws_section, stderr, stdout, TestEnv, INVITATION_URL};

/// `engi-` and 13 of `[0-9a-z]` (the model's pattern).
fn engi(n: u32) -> String {
    format!("engi-test{n:09}")
}

fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An opportunity invitation as `GetEngagementInvitation` answers it (D.4), still PENDING,
/// sent `sent_ago` ago, expiring `expires_in` from now (no `ExpirationDate` when `None`).
fn invitation(n: u32, customer: &str, sent_ago: Duration, expires_in: Option<Duration>) -> Value {
    let now = Utc::now();
    let id = engi(n);
    let mut inv = json!({
        "Arn": format!("arn:aws:partnercentral:us-east-1::catalog/AWS/engagement-invitation/{id}"),
        "Id": id, "Catalog": "AWS", "PayloadType": "OpportunityInvitation",
        "EngagementId": format!("eng-test{n:010}"), "EngagementTitle": format!("Engagement {n}"),
        "Status": "PENDING", "InvitationDate": at(now - sent_ago),
        "SenderAwsAccountId": "123456789012", "SenderCompanyName": "Amazon Web Services",
        "Receiver": {"Account": {"AwsAccountId": "210987654321"}},
        "Payload": {"OpportunityInvitation": {
            "ReceiverResponsibilities": ["Services Partner"],
            "Customer": {"Industry": "Software and Internet", "CompanyName": customer,
                         "WebsiteUrl": "https://customer.example", "CountryCode": "US"},
            "Project": {"Title": format!("Project {n}"),
                        "BusinessProblem": "Move the data warehouse to AWS before the year ends",
                        "TargetCompletionDate": "2027-06-30",
                        "ExpectedCustomerSpend": [{"Amount": "1000", "CurrencyCode": "USD",
                                                   "Frequency": "Monthly", "TargetCompany": "AWS"}]}}},
        "InvitationMessage": "Please have a look"
    });
    if let Some(left) = expires_in {
        inv["ExpirationDate"] = json!(at(now + left));
    }
    inv
}

async fn json_hook() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

fn webhook(url: &str) -> String {
    format!("\n[[alerts.webhook]]\nurl = \"{url}\"\nformat = \"json\"\n")
}

/// The JSON alerts the hook received, by id.
async fn alerts_received(server: &MockServer) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for request in server.received_requests().await.unwrap_or_default() {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let id = body["id"].as_str().unwrap().to_string();
        out.insert(id, body);
    }
    out
}

fn operations(env: &TestEnv, op: &str) -> Vec<Value> {
    (env.aws().requests().into_iter())
        .filter(|r| r.operation == op)
        .map(|r| r.body)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inbox_is_pulled_across_pages_with_the_pending_and_receiver_filters() {
    let env = TestEnv::with_aws("").await;
    let aws = env.aws();
    let day = Duration::days(1);
    aws.put_invitations(
        (1..=5).map(|n| invitation(n, &format!("Customer {n}"), day, Some(Duration::days(10)))),
    );
    // Answered already: not in the PENDING list, never read, never stored.
    let mut accepted = invitation(6, "Answered Inc", day, Some(Duration::days(10)));
    accepted["Status"] = json!("ACCEPTED");
    aws.put_invitations([accepted]);
    aws.set_page_size(2);

    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("aws invitations: 3 pages, 5 new"),
        "{}",
        stdout(&out)
    );
    let lists = operations(&env, "ListEngagementInvitations");
    assert_eq!(lists.len(), 3, "5 pending at 2 a page: {lists:?}");
    for (i, body) in lists.iter().enumerate() {
        assert_eq!(body["ParticipantType"], "RECEIVER", "{body}");
        assert_eq!(body["Status"], json!(["PENDING"]), "{body}");
        assert_eq!(body["Catalog"], "AWS", "{body}");
        assert_eq!(body["MaxResults"], 100, "{body}");
        assert_eq!(body.get("NextToken").is_some(), i > 0, "{body}");
    }
    let gets: Vec<String> = operations(&env, "GetEngagementInvitation")
        .iter()
        .map(|b| b["Identifier"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(gets.len(), 5, "each new invitation read once: {gets:?}");
    assert!(!gets.contains(&engi(6)));
    let stored: i64 = env.query(
        "SELECT COUNT(*) FROM referrals WHERE source = 'aws' AND status = 'New' AND substatus = 'Pending'",
        |r| r.get(0),
    );
    assert_eq!(stored, 5);
    let (customer, value): (String, f64) = env.query(
        &format!(
            "SELECT customer_name, deal_value FROM referrals WHERE id = '{}'",
            engi(1)
        ),
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!((customer.as_str(), value), ("Customer 1", 12_000.0));

    // Nothing changed: the list again, no detail read.
    assert!(env.run(&["sync"]).await.status.success());
    assert_eq!(operations(&env, "GetEngagementInvitation").len(), 5);
    assert_eq!(operations(&env, "ListEngagementInvitations").len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_alerts_come_at_the_thresholds_from_expiration_date_with_source_aws() {
    let hook = json_hook().await;
    let env = TestEnv::with_aws(&webhook(&format!("{}/hook", hook.uri()))).await;
    let d = Duration::days(1);
    // Sent a day ago, so InvitationDate + 15 days is two weeks away: only ExpirationDate can
    // make these due.
    env.aws().put_invitations([
        invitation(1, "Twenty Hours Ltd", d, Some(Duration::hours(20))),
        invitation(2, "Three Hours Ltd", d, Some(Duration::hours(3))),
        invitation(3, "Fifty Hours Ltd", d, Some(Duration::hours(50))),
        invitation(4, "Ten Days Ltd", d, Some(Duration::days(10))),
        // No ExpirationDate: InvitationDate + 15 days, 3 hours from now, estimated.
        invitation(
            5,
            "Estimated Ltd",
            Duration::days(15) - Duration::hours(3),
            None,
        ),
    ]);
    // A Microsoft referral alerted in the same cycle carries its own source.
    env.sim
        .put_referrals(sample::demo_set(2, Utc::now()).into_iter().skip(1));

    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let got = alerts_received(&hook).await;
    let expiring = |n: u32, t: &str| format!("referral_expiring:{}:{t}", engi(n));
    for id in [
        expiring(1, "24h"),
        expiring(2, "4h"),
        expiring(3, "72h"),
        expiring(5, "4h"),
    ] {
        let alert = got
            .get(&id)
            .unwrap_or_else(|| panic!("{id} not received: {:?}", got.keys()));
        assert_eq!(alert["source"], "aws", "{alert}");
        let referral_id = alert["referral_id"].as_str().unwrap();
        assert!(referral_id.starts_with("engi-"), "{alert}");
        assert_eq!(
            alert["link"],
            INVITATION_URL.replace("{id}", referral_id),
            "{alert}"
        );
        assert!(
            alert["message"]
                .as_str()
                .unwrap()
                .starts_with("AWS invitation"),
            "{alert}"
        );
    }
    assert!(
        got.keys().all(|k| !k.contains(&engi(4))),
        "10 days left: no alert: {:?}",
        got.keys()
    );
    let deadline = got[&expiring(1, "24h")]["deadline"].as_str().unwrap();
    let from_aws = env.aws().invitation(&engi(1)).unwrap()["ExpirationDate"].clone();
    assert_eq!(deadline, from_aws, "the deadline is ExpirationDate");
    let estimated = got[&expiring(5, "4h")]["message"].as_str().unwrap();
    assert!(estimated.contains("estimated"), "{estimated}");
    let microsoft: Vec<&Value> = got
        .values()
        .filter(|a| {
            !a["referral_id"]
                .as_str()
                .unwrap_or("engi-")
                .starts_with("engi-")
        })
        .collect();
    assert!(!microsoft.is_empty(), "{:?}", got.keys());
    assert!(
        microsoft.iter().all(|a| a["source"] == "microsoft"),
        "{microsoft:?}"
    );

    // AWS expires invitation 2 (its deadline passed): it leaves the PENDING list, the pull
    // reads how it ended, and `referral_expired` goes out once, with source aws.
    env.aws().edit_invitation(&engi(2), |inv| {
        inv["Status"] = json!("EXPIRED");
        inv["ExpirationDate"] = json!(at(Utc::now() - Duration::minutes(5)));
    });
    assert!(env.run(&["sync"]).await.status.success());
    assert!(env.run(&["sync"]).await.status.success());
    let got = alerts_received(&hook).await;
    let expired = &got[&format!("referral_expired:{}", engi(2))];
    assert_eq!(expired["source"], "aws", "{expired}");
    assert!(
        expired["message"]
            .as_str()
            .unwrap()
            .contains("AWS marks it EXPIRED"),
        "{expired}"
    );
    let received = hook.received_requests().await.unwrap();
    let expired_calls = received
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("referral_expired:engi-"))
        .count();
    assert_eq!(expired_calls, 1, "once");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invitation_accepted_in_the_console_is_no_write_and_its_state_is_shown() {
    let env = TestEnv::with_aws("").await;
    let d = Duration::days(1);
    env.aws().put_invitations([
        invitation(1, "Console Corp", d, Some(Duration::days(10))),
        invitation(2, "Estimate GmbH", Duration::days(2), None),
    ]);
    assert!(env.run(&["sync"]).await.status.success());
    let text = stdout(&env.run(&["status"]).await);
    assert!(text.contains(&format!("{} (aws)", engi(1))), "{text}");
    assert!(
        text.contains(&format!("{} (aws, estimated)", engi(2))),
        "{text}"
    );

    env.aws()
        .edit_invitation(&engi(1), |inv| inv["Status"] = json!("ACCEPTED"));
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1 no longer pending"),
        "{}",
        stdout(&out)
    );
    let writes: Vec<String> = (env.aws().requests().into_iter())
        .map(|r| r.operation)
        .filter(|op| op.starts_with("Start") || op.starts_with("Reject"))
        .collect();
    assert!(
        writes.is_empty(),
        "no write for an answered invitation: {writes:?}"
    );

    let text = stdout(&env.run(&["status"]).await);
    assert!(text.contains("AWS invitations by state:"), "{text}");
    assert!(text.contains("ACCEPTED"), "{text}");
    assert!(
        !text.contains(&format!("{} (aws)", engi(1))),
        "no longer awaiting: {text}"
    );
    assert!(
        text.contains("aws "),
        "the service level counts AWS: {text}"
    );

    let view: Value = serde_json::from_str(&stdout(
        &env.run(&["status", "--referral", &engi(1), "--json"]).await,
    ))
    .unwrap();
    assert_eq!(view["referral"]["source"], "aws", "{view}");
    assert_eq!(view["referral"]["status"], "Active", "{view}");
    assert_eq!(view["invitation"]["aws_status"], "ACCEPTED", "{view}");
    assert_eq!(view["invitation"]["customer"], "Console Corp", "{view}");
    assert_eq!(
        view["invitation"]["sender_company_name"], "Amazon Web Services",
        "{view}"
    );
    assert!(view["awaiting"].is_null(), "{view}");

    let text = stdout(&env.run(&["status", "--referral", &engi(2)]).await);
    assert!(
        text.starts_with(&format!("AWS invitation {}", engi(2))),
        "{text}"
    );
    assert!(text.contains("aws state: PENDING"), "{text}");
    assert!(text.contains("Estimate GmbH"), "{text}");
    assert!(
        text.contains("Amazon Web Services (account 123456789012)"),
        "{text}"
    );
    assert!(
        text.contains("estimated: InvitationDate + 15 days"),
        "{text}"
    );
    let json: Value = serde_json::from_str(&stdout(
        &env.run(&["status", "--referral", &engi(2), "--json"]).await,
    ))
    .unwrap();
    assert_eq!(json["invitation"]["deadline_estimated"], true, "{json}");
    assert_eq!(json["referral"]["deadline_estimated"], true, "{json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_denied_makes_sync_exit_1_naming_the_iam_action_and_microsoft_still_syncs() {
    // The simulator knows no IAM policies: an AWS that refuses the action.
    let aws = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400)
                .insert_header("x-amzn-errortype", "AccessDeniedException")
                .set_body_json(json!({
                    "__type": "com.amazonaws.partnercentral.selling#AccessDeniedException",
                    "message": "User is not authorized to perform: partnercentral:ListEngagementInvitations"
                })),
        )
        .mount(&aws)
        .await;
    let hook = json_hook().await;
    let extra = aws_section(&aws.uri(), &webhook(&format!("{}/hook", hook.uri())));
    let env = TestEnv::with_extra(&extra).await;
    env.sim.put_referrals(sample::demo_set(3, Utc::now()));

    let out = env.run(&["sync"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("partnercentral:ListEngagementInvitations"),
        "{err}"
    );
    assert!(err.contains("AccessDeniedException"), "{err}");
    let microsoft: i64 = env.query(
        &format!(
            "SELECT COUNT(*) FROM referrals WHERE source = 'microsoft' AND id IN ('{}', '{}', '{}')",
            sample::referral_id(0),
            sample::referral_id(1),
            sample::referral_id(2)
        ),
        |r| r.get(0),
    );
    assert_eq!(microsoft, 3, "the Microsoft pull still ran");
    let got = alerts_received(&hook).await;
    let unhealthy: Vec<&Value> = got
        .values()
        .filter(|a| a["kind"] == "sync_unhealthy")
        .collect();
    assert_eq!(unhealthy.len(), 1, "{:?}", got.keys());
    assert!(unhealthy[0].get("source").is_none(), "{}", unhealthy[0]);
    assert!(
        unhealthy[0]["message"]
            .as_str()
            .unwrap()
            .contains("partnercentral:ListEngagementInvitations"),
        "{}",
        unhealthy[0]
    );
    assert!(
        !unhealthy[0]["message"]
            .as_str()
            .unwrap()
            .contains("auth microsoft"),
        "an AWS refusal is not fixed by signing in to Microsoft: {}",
        unhealthy[0]
    );
    // Microsoft's expiry alerts went out too (the cycle's alert phases ran).
    assert!(
        got.values()
            .any(|a| a["kind"] == "referral_expiring" && a["source"] == "microsoft"),
        "{:?}",
        got.keys()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_google_lead_is_made_for_an_invitation() {
    let env = TestEnv::with_google_and_aws("").await;
    let d = Duration::days(1);
    env.aws().put_invitations(
        (1..=3).map(|n| invitation(n, "Lead-less Ltd", d, Some(Duration::days(5)))),
    );
    env.sim.put_referrals(sample::demo_set(2, Utc::now()));
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.run(&["sync", "--all"]).await.status.success());
    let invitations: i64 = env.query(
        "SELECT COUNT(*) FROM referrals WHERE source = 'aws' AND status = 'New'",
        |r| r.get(0),
    );
    assert_eq!(invitations, 3, "the invitations are tracked");
    let per_referral = env.sim.leads_per_external_id();
    assert!(
        per_referral.contains_key(&sample::referral_id(0)),
        "the Microsoft referrals got theirs: {per_referral:?}"
    );
    assert!(
        per_referral.keys().all(|k| !k.contains("engi-")),
        "{per_referral:?}"
    );
    let descriptions: Vec<String> = (env.sim.google_leads().iter())
        .map(|l| l.to_string())
        .filter(|l| l.contains("engi-") || l.contains("Lead-less"))
        .collect();
    assert!(descriptions.is_empty(), "{descriptions:?}");
    let planned: i64 = env.query(
        "SELECT COUNT(*) FROM outbox WHERE referral_id LIKE 'engi-%'",
        |r| r.get(0),
    );
    assert_eq!(planned, 0, "nothing planned for an invitation");
    let blocked: i64 = env.query(
        "SELECT COUNT(*) FROM forward_blocked WHERE referral_id LIKE 'engi-%'",
        |r| r.get(0),
    );
    assert_eq!(blocked, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_invitations_are_kept_aside_and_the_rest_of_the_page_is_stored() {
    let env = TestEnv::with_aws("").await;
    let d = Duration::days(1);
    let mut no_id = invitation(3, "No Id", d, Some(Duration::days(5)));
    no_id["Id"] = json!("");
    let mut odd_id = invitation(4, "Odd Id", d, Some(Duration::days(5)));
    odd_id["Id"] = json!("not-an-invitation");
    // Unknown payload type, unreadable and absurd dates, members of the wrong type.
    let mut odd = invitation(5, "Odd Members", d, None);
    odd["PayloadType"] = json!("PartnerInvitation");
    odd["InvitationDate"] = json!("yesterday");
    odd["ExpirationDate"] = json!("+275760-09-13T00:00:00Z");
    odd["EngagementTitle"] = json!(5);
    odd["Payload"] = json!({"PartnerInvitation": {"Customer": {"CompanyName": ["x"]}}});
    env.aws().put_invitations([
        invitation(1, "Good One", d, Some(Duration::days(5))),
        no_id,
        odd_id,
        odd,
        invitation(2, "Good Two", d, Some(Duration::days(5))),
    ]);
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("3 new"), "{}", stdout(&out));
    assert!(stdout(&out).contains("2 unreadable"), "{}", stdout(&out));
    let rejected: i64 = env.query(
        "SELECT COUNT(*) FROM rejected_records WHERE source = 'aws.invitation'",
        |r| r.get(0),
    );
    assert_eq!(rejected, 2);
    let (title, estimated): (String, bool) = env.query(
        &format!(
            "SELECT name, deadline_estimated FROM referrals WHERE id = '{}'",
            engi(5)
        ),
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(title, format!("PartnerInvitation {}", engi(5)));
    assert!(
        estimated,
        "no readable date: 15 days from first seen, estimated"
    );
    assert!(env.run(&["status"]).await.status.success());
    let view = env.run(&["status", "--referral", &engi(5)]).await;
    assert!(
        stdout(&view).contains("unreadable: InvitationDate"),
        "{}",
        stdout(&view)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_backs_off_and_a_vanished_invitation_is_alerted_once() {
    let hook = json_hook().await;
    let env = TestEnv::with_aws(&webhook(&format!("{}/hook", hook.uri()))).await;
    let d = Duration::days(1);
    env.aws().put_invitations(
        (1..=3).map(|n| invitation(n, "Throttled Ltd", d, Some(Duration::days(5)))),
    );
    env.aws().throttle_next(2);
    let out = env.run(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.aws().counter("throttled"), 2);
    assert!(stdout(&out).contains("3 new"), "{}", stdout(&out));

    // Withdrawn: AWS no longer finds it (here: moved to the other catalog).
    env.aws()
        .edit_invitation(&engi(2), |inv| inv["Catalog"] = json!("Sandbox"));
    for _ in 0..3 {
        let out = env.run(&["sync"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let reads_of_2 = operations(&env, "GetEngagementInvitation")
        .iter()
        .filter(|b| b["Identifier"] == engi(2).as_str())
        .count();
    assert_eq!(
        reads_of_2, 2,
        "read when new, once more when it left the list, then never"
    );
    let got = alerts_received(&hook).await;
    let vanished = &got[&format!("invitation_vanished:{}", engi(2))];
    assert_eq!(vanished["source"], "aws", "{vanished}");
    assert_eq!(vanished["referral_id"], engi(2).as_str(), "{vanished}");
    let calls = hook.received_requests().await.unwrap();
    let vanished_calls = calls
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("invitation_vanished:"))
        .count();
    assert_eq!(vanished_calls, 1);
    let state: String = env.query(
        &format!("SELECT substatus FROM referrals WHERE id = '{}'", engi(2)),
        |r| r.get(0),
    );
    assert_eq!(state, "Vanished");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_next_token_ends_the_listing_instead_of_looping() {
    let aws = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"EngagementInvitationSummaries": [], "NextToken": "the-same-token"}),
        ))
        .mount(&aws)
        .await;
    let env = TestEnv::with_extra(&aws_section(&aws.uri(), "")).await;
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), env.run(&["sync"]))
        .await
        .expect("the sync ends");
    assert!(out.status.success(), "{}", stderr(&out));
    let lists = aws.received_requests().await.unwrap();
    assert_eq!(
        lists.len(),
        2,
        "the first page, then the page whose token repeats"
    );
}

/// The daemon's cycle (`run`) pulls the AWS inbox and alerts from it, as `sync` does.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_pulls_and_alerts_the_aws_inbox() {
    let env = TestEnv::with_aws("").await;
    let d = Duration::days(1);
    env.aws().put_invitations([
        invitation(1, "Daemon Near Ltd", d, Some(Duration::hours(10))),
        invitation(2, "Daemon Far Ltd", d, Some(Duration::days(9))),
    ]);
    let (_socket, mut child, log) = crate::daemon::start_run(&env);
    let db = env.state_db();
    let alert_id = format!("referral_expiring:{}:24h", engi(1));
    let seen = crate::helpers::wait_until(std::time::Duration::from_secs(30), || {
        let Ok(conn) = rusqlite::Connection::open(&db) else {
            return false;
        };
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap_or(0) };
        count("SELECT COUNT(*) FROM referrals WHERE source = 'aws'") == 2
            && count(&format!(
                "SELECT COUNT(*) FROM alerts WHERE id = '{alert_id}'"
            )) == 1
    })
    .await;
    crate::daemon::kill(&child, "-TERM");
    let _ = child.wait().await;
    assert!(
        seen,
        "the daemon did not pull and alert: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let payload: String = env.query(
        &format!("SELECT payload FROM alerts WHERE id = '{alert_id}'"),
        |r| r.get(0),
    );
    let alert: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(alert["source"], "aws", "{alert}");
}

/// The team's inbox page lists AWS invitations beside referrals, each row naming its source
/// (the column said "microsoft" for every row).
#[tokio::test(flavor = "multi_thread")]
async fn the_inbox_page_names_each_rows_source() {
    let env = TestEnv::with_aws("").await;
    let d = Duration::days(1);
    env.aws().put_invitations([invitation(
        1,
        "Inbox Invitation Ltd",
        d,
        Some(Duration::days(3)),
    )]);
    let page = crate::actions::start_on(env, 0..1, "actor_header = \"X-Forwarded-Email\"\n").await;
    // The daemon is up and has alerted once its first cycle ran.
    crate::actions::action_urls(&page, 1).await;
    let inbox = format!("{}/inbox", page.public_url);
    let ana = [("X-Forwarded-Email", "ana@partner.example")];
    let mut html = String::new();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < until {
        let (status, text) = crate::actions::get(&inbox, &ana).await;
        if status == 200 && text.contains(&engi(1)) && text.contains(&sample::referral_id(0)) {
            html = text;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!html.is_empty(), "the inbox never listed both");
    let row = |id: &str| -> String {
        let start = html.find(&format!("value=\"{id}\"")).unwrap();
        let end = html[start..].find("</tr>").unwrap();
        html[start..start + end].to_string()
    };
    assert!(row(&engi(1)).contains("<td>aws</td>"), "{}", row(&engi(1)));
    assert!(
        row(&sample::referral_id(0)).contains("<td>microsoft</td>"),
        "{}",
        row(&sample::referral_id(0))
    );
}

/// `link` ties Google records to Partner Center referrals only: a linked invitation would be
/// re-read and synced as a referral.
#[tokio::test(flavor = "multi_thread")]
async fn link_refuses_an_aws_invitation() {
    let env = TestEnv::with_google_and_aws("").await;
    env.aws().put_invitations([invitation(
        1,
        "Link Me Ltd",
        Duration::days(1),
        Some(Duration::days(5)),
    )]);
    assert!(env.run(&["sync"]).await.status.success());
    let out = env
        .run(&["link", &engi(1), "partners/1234567/leads/999"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("is an AWS invitation"),
        "{}",
        stderr(&out)
    );
    let links: i64 = env.query("SELECT COUNT(*) FROM links", |r| r.get(0));
    assert_eq!(links, 0);
}
