//! Answers to AWS engagement invitations (spec §8): `accept engi-…` and `decline engi-…`
//! through the one executor, against the AWS simulator (which follows `partner-apis.md`
//! part D): one task start whose `ClientToken` survives a throttled retry and a restart, the
//! task followed to `COMPLETE` (its opportunity in `status` and `audit`) or `FAILED`
//! (`action_failed`), one reject with its reason, a reason AWS would refuse refused before
//! anything is sent, an invitation accepted in the console left alone, and writes never
//! faster than one a second.

use std::time::Duration;

use chrono::Utc;
use cosell_sync::sim::aws::{self as sim_aws, AwsRequest, AwsSimulator};
use serde_json::Value;

use crate::helpers::{stderr, stdout, wait_until, TestEnv, BIN};

const START: &str = "StartEngagementByAcceptingInvitationTask";
const LIST_TASKS: &str = "ListEngagementByAcceptingInvitationTasks";
const REJECT: &str = "RejectEngagementInvitation";
/// A sample invitation days from its deadline.
const INVITATION: &str = "engi-sim0000000002";

/// The simulators (Microsoft's, kept in the config, and AWS's with the sample inbox) and a
/// config with `[aws]` pointing at the AWS one with a key it allows.
async fn with_aws_answers() -> (TestEnv, AwsSimulator) {
    let aws = AwsSimulator::start()
        .await
        .expect("the AWS simulator starts");
    aws.put_invitations(sim_aws::sample_invitations(Utc::now()));
    aws.allow_key("AKIDANSWERSTEST01", "answers-test-secret", None);
    let env = TestEnv::new().await;
    env.write_config(&format!(
        r#"
[aws]
endpoint = "{endpoint}"
access_key_id = "AKIDANSWERSTEST01"
secret_access_key = "answers-test-secret"

[aws.retry]
min_delay = "10ms"
max_delay = "50ms"

[sync]
retry_min = "10ms"
retry_max = "50ms"
"#,
        endpoint = aws.endpoint()
    ));
    (env, aws)
}

/// [`with_aws_answers`] with a database, and [`INVITATION`] in it as the inbox keeps it.
async fn with_stored_invitation() -> (TestEnv, AwsSimulator) {
    let (env, aws) = with_aws_answers().await;
    let sync = env.run(&["sync"]).await;
    assert_eq!(sync.status.code(), Some(0), "{}", stderr(&sync));
    store_invitation(&env, INVITATION);
    (env, aws)
}

/// The invitation as the AWS inbox stores it: a row of `referrals`, New/Pending while
/// `PENDING` (the answer marks it answered).
fn store_invitation(env: &TestEnv, id: &str) {
    let conn = rusqlite::Connection::open(env.state_db()).unwrap();
    let now = cosell_sync::timefmt::db_timestamp(Utc::now());
    conn.execute(
        "INSERT OR IGNORE INTO referrals (id, name, customer_name, status, substatus, created_at,
             updated_at, raw_json, first_seen_at, last_changed_at)
         VALUES (?1, 'SAP migration', 'Tailspin Toys', 'New', 'Pending', ?2, ?2, '{}', ?2, ?2)",
        rusqlite::params![id, now],
    )
    .unwrap();
}

/// The accept task's id as its action's result stores it, once the start answered.
fn task_stored(env: &TestEnv) -> Option<String> {
    let conn = rusqlite::Connection::open(env.state_db()).ok()?;
    conn.query_row(
        "SELECT json_extract(result, '$.task.task_id') FROM outbox WHERE kind = 'aws_accept'",
        [],
        |r| r.get::<_, Option<String>>(0),
    )
    .ok()
    .flatten()
}

/// `accept` in its own process, killed once the start answered and its TaskId is stored
/// with the action (before the task completes: its first poll is 5 s after the start).
async fn accept_then_kill(env: &TestEnv, aws: &AwsSimulator) {
    let mut first = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .args(["accept", INVITATION])
        .env_remove("RUST_LOG")
        .env_remove("COSELL_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let started = wait_until(Duration::from_secs(20), || task_stored(env).is_some()).await;
    assert!(started, "the task was started: {:?}", aws.requests());
    first.start_kill().unwrap();
    let _ = first.wait().await;
}

/// As if the process died with the start on the wire: the row in flight, no TaskId stored.
fn lose_the_start_s_answer(env: &TestEnv) {
    let conn = rusqlite::Connection::open(env.state_db()).unwrap();
    conn.execute(
        "UPDATE outbox SET state = 'in_flight', result = NULL WHERE kind = 'aws_accept'",
        [],
    )
    .unwrap();
}

fn of(requests: &[AwsRequest], operation: &str) -> Vec<AwsRequest> {
    requests
        .iter()
        .filter(|r| r.operation == operation)
        .cloned()
        .collect()
}

fn writes(aws: &AwsSimulator) -> Vec<AwsRequest> {
    let all = aws.requests();
    let mut out = of(&all, START);
    out.extend(of(&all, REJECT));
    out
}

#[tokio::test]
async fn an_accept_starts_one_task_with_one_client_token_across_a_throttle_and_a_restart() {
    let (env, aws) = with_stored_invitation().await;
    aws.set_polls_to_finish(1);
    aws.throttle_next_of(START, 1);
    // The first process starts the task and is killed before the task completes.
    accept_then_kill(&env, &aws).await;
    assert!(
        of(&aws.requests(), LIST_TASKS).is_empty(),
        "killed before the task was read"
    );
    assert_eq!(
        env.query("SELECT state FROM outbox WHERE kind = 'aws_accept'", |r| {
            r.get::<_, String>(0)
        }),
        "pending",
        "following the task"
    );
    // The restart: the same accept again joins the open action and follows its task.
    let out = env.run(&["accept", INVITATION]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let requests = aws.requests();
    let throttled = of(&aws.throttled(), START);
    assert_eq!(throttled.len(), 1, "the first start was throttled");
    let starts: Vec<AwsRequest> = throttled.into_iter().chain(of(&requests, START)).collect();
    let token = starts[0].body["ClientToken"]
        .as_str()
        .expect("a ClientToken");
    assert!(!token.is_empty());
    for start in &starts {
        assert_eq!(start.body["ClientToken"], token, "one token: {starts:?}");
        assert_eq!(start.body["Identifier"], INVITATION);
        assert_eq!(start.body["Catalog"], "AWS");
    }
    // One task: every poll names the same one, and it ended COMPLETE with its opportunity.
    let polls = of(&requests, LIST_TASKS);
    assert!(!polls.is_empty());
    let task = polls[0].body["TaskIdentifier"][0].clone();
    assert!(polls
        .iter()
        .all(|p| p.body["TaskIdentifier"] == Value::Array(vec![task.clone()])));
    assert_eq!(aws.invitation(INVITATION).unwrap()["Status"], "ACCEPTED");
    let printed = stdout(&out);
    let opportunity = printed
        .split_whitespace()
        .find(|w| w.starts_with('O') && w[1..].chars().all(|c| c.is_ascii_digit()) && w.len() > 1)
        .unwrap_or_else(|| panic!("an opportunity id in {printed}"))
        .to_string();
    // `status --referral engi-… --json` and `audit` show the new opportunity.
    let status = env
        .run(&["status", "--referral", INVITATION, "--json"])
        .await;
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let view: Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(view["aws_task"]["opportunity_id"], opportunity.as_str());
    assert_eq!(view["aws_task"]["status"], "COMPLETE");
    assert_eq!(view["aws_task"]["task_id"], task);
    assert_eq!(view["referral"]["status"], "Active");
    assert_eq!(view["referral"]["substatus"], "Accepted");
    let text = stdout(&env.run(&["status", "--referral", INVITATION]).await);
    assert!(
        text.contains(&format!("opportunity {opportunity}")),
        "{text}"
    );
    let audit = stdout(&env.run(&["audit", "--referral", INVITATION]).await);
    assert!(audit.contains(&opportunity), "{audit}");
    assert!(
        audit.contains(token),
        "the start is audited with its token: {audit}"
    );
}

/// A process killed while the start was on the wire: the row is in flight and its answer
/// (the TaskId) was never stored. The next start repeats the stored ClientToken, and AWS
/// answers with the task it already started: still one task.
#[tokio::test]
async fn a_start_whose_answer_was_lost_is_repeated_with_its_token_and_finds_its_task() {
    let (env, aws) = with_aws_answers().await;
    aws.set_polls_to_finish(1);
    accept_then_kill(&env, &aws).await;
    lose_the_start_s_answer(&env);
    let out = env.run(&["accept", INVITATION]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("opportunity O"), "{}", stdout(&out));
    let requests = aws.requests();
    let starts = of(&requests, START);
    assert_eq!(starts.len(), 2, "sent again: {requests:?}");
    assert_eq!(starts[0].body["ClientToken"], starts[1].body["ClientToken"]);
    let polls = of(&requests, LIST_TASKS);
    assert!(polls
        .iter()
        .all(|p| p.body["TaskIdentifier"] == polls[0].body["TaskIdentifier"]));
    assert_eq!(
        polls[0].body["TaskIdentifier"][0], "task-0000000000001",
        "the one task"
    );
}

/// The same lost answer, but the task completed before anyone read it: the invitation now
/// reads ACCEPTED, nothing is written again, and the completed task's opportunity is kept.
#[tokio::test]
async fn a_task_that_completed_unrecorded_still_shows_its_opportunity() {
    let (env, aws) = with_stored_invitation().await;
    aws.set_polls_to_finish(1);
    accept_then_kill(&env, &aws).await;
    let task = task_stored(&env).unwrap();
    // AWS finishes the task meanwhile (the simulator's tasks end after their reads).
    let client = sim_client(&aws);
    let mut opportunity = None;
    for _ in 0..3 {
        opportunity = client
            .get_accept_task(&task)
            .await
            .unwrap()
            .unwrap()
            .opportunity_id;
    }
    let opportunity = opportunity.expect("COMPLETE");
    lose_the_start_s_answer(&env);
    let out = env.run(&["accept", INVITATION]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains(&opportunity), "{}", stdout(&out));
    assert_eq!(of(&aws.requests(), START).len(), 1, "not started again");
    let view: Value = serde_json::from_str(&stdout(
        &env.run(&["status", "--referral", INVITATION, "--json"])
            .await,
    ))
    .unwrap();
    assert_eq!(view["aws_task"]["opportunity_id"], opportunity.as_str());
    assert_eq!(view["referral"]["substatus"], "Accepted");
}

#[tokio::test]
async fn a_failed_accept_task_is_action_failed_with_its_reason_code() {
    let (env, aws) = with_aws_answers().await;
    aws.set_polls_to_finish(0);
    aws.fail_next_accept(
        "OpportunityConflict",
        "An opportunity for this customer exists",
    );
    let out = env.run(&["accept", INVITATION]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let said = stderr(&out);
    assert!(said.contains("OpportunityConflict"), "{said}");
    assert!(
        said.contains("An opportunity for this customer exists"),
        "{said}"
    );
    assert_eq!(of(&aws.requests(), START).len(), 1);
    // The deadline lane raises the alert of the dead action.
    let sync = env.run(&["sync"]).await;
    assert_eq!(sync.status.code(), Some(0), "{}", stderr(&sync));
    let alerts: Value =
        serde_json::from_str(&stdout(&env.run(&["alerts", "list", "--json"]).await)).unwrap();
    let failed: Vec<&Value> = alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "action_failed" || a["alert"]["kind"] == "action_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{alerts:#}");
    assert!(
        failed[0].to_string().contains("OpportunityConflict"),
        "{alerts:#}"
    );
    assert!(failed[0].to_string().contains(INVITATION), "{alerts:#}");
}

#[tokio::test]
async fn a_decline_sends_one_reject_with_its_reason() {
    let (env, aws) = with_aws_answers().await;
    let out = env
        .run(&["decline", INVITATION, "--reason", "Unable to support"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let requests = aws.requests();
    let rejects = of(&requests, REJECT);
    assert_eq!(rejects.len(), 1, "{requests:?}");
    assert_eq!(rejects[0].body["Identifier"], INVITATION);
    assert_eq!(rejects[0].body["RejectionReason"], "Unable to support");
    assert_eq!(rejects[0].body["Catalog"], "AWS");
    assert_eq!(
        requests[0].operation, "GetEngagementInvitation",
        "read before it is answered"
    );
    assert_eq!(aws.invitation(INVITATION).unwrap()["Status"], "REJECTED");
    // Declined again: read, found declined, nothing sent.
    let again = env
        .run(&["decline", INVITATION, "--reason", "Unable to support"])
        .await;
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already declined"),
        "{}",
        stdout(&again)
    );
    assert_eq!(of(&aws.requests(), REJECT).len(), 1);
}

#[tokio::test]
async fn a_decline_reason_aws_would_refuse_is_a_usage_error_and_nothing_is_sent() {
    let (env, aws) = with_aws_answers().await;
    let long = "x".repeat(81);
    for reason in [long.as_str(), "Out of scope \u{1F600}"] {
        let out = env.run(&["decline", INVITATION, "--reason", reason]).await;
        assert_eq!(out.status.code(), Some(2), "{reason}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("nothing was sent"),
            "{}",
            stderr(&out)
        );
    }
    // 80 characters is AWS's limit, not over it.
    let dry = env
        .run(&[
            "decline",
            INVITATION,
            "--reason",
            &"x".repeat(80),
            "--dry-run",
        ])
        .await;
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert!(stdout(&dry).contains(REJECT), "{}", stdout(&dry));
    assert!(writes(&aws).is_empty(), "{:?}", aws.requests());
    assert_eq!(aws.invitation(INVITATION).unwrap()["Status"], "PENDING");
}

#[tokio::test]
async fn an_invitation_accepted_in_the_console_is_not_written() {
    let (env, aws) = with_aws_answers().await;
    aws.edit_invitation(INVITATION, |inv| inv["Status"] = "ACCEPTED".into());
    let out = env.run(&["accept", INVITATION]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("already accepted"),
        "{}",
        stdout(&out)
    );
    let declined = env.run(&["decline", INVITATION, "--reason", "Other"]).await;
    assert_eq!(declined.status.code(), Some(1));
    assert!(
        stderr(&declined).contains("accepted"),
        "{}",
        stderr(&declined)
    );
    assert!(writes(&aws).is_empty(), "{:?}", aws.requests());
}

/// A client of the simulator's default key; reads at 100 a second, so only the write limit
/// spaces writes.
fn sim_client(aws: &AwsSimulator) -> cosell_sync::aws::client::AwsClient {
    let credentials = cosell_sync::aws::sigv4::Credentials {
        access_key_id: sim_aws::ACCESS_KEY_ID.into(),
        secret_access_key: sim_aws::SECRET_ACCESS_KEY.to_string().into(),
        session_token: None,
    };
    let http = cosell_sync::http::client(Duration::from_secs(10), Duration::from_secs(5));
    cosell_sync::aws::client::AwsClient::new(http, &aws.endpoint(), "AWS", credentials, 100.0)
        .unwrap()
}

#[tokio::test]
async fn a_reloaded_client_keeps_the_write_second_of_the_one_it_replaces() {
    let aws = AwsSimulator::start().await.unwrap();
    aws.put_invitations(sim_aws::sample_invitations(Utc::now()));
    let old = sim_client(&aws);
    old.reject_invitation("engi-sim0000000001", "Other")
        .await
        .unwrap();
    let mut new = sim_client(&aws);
    new.keep_limits_of(&old, true);
    new.reject_invitation("engi-sim0000000002", "Other")
        .await
        .unwrap();
    let at: Vec<_> = writes(&aws).into_iter().map(|w| w.at).collect();
    assert_eq!(at.len(), 2);
    assert!(at[1] - at[0] >= chrono::Duration::seconds(1), "{at:?}");
}

#[tokio::test]
async fn writes_to_aws_are_never_faster_than_one_a_second() {
    let aws = AwsSimulator::start().await.unwrap();
    let invitations = sim_aws::sample_invitations(Utc::now());
    aws.put_invitations(invitations.clone());
    let client = sim_client(&aws);
    let ids: Vec<String> = invitations
        .iter()
        .map(|i| i["Id"].as_str().unwrap().to_string())
        .collect();
    // Four writes at once, two of each kind, with reads between them.
    let calls = ids.iter().enumerate().map(|(n, id)| {
        let client = client.clone();
        async move {
            let _ = client.get_invitation(id).await;
            if n % 2 == 0 {
                client
                    .start_accept_task(id, &format!("token-{n}"))
                    .await
                    .map(|_| ())
            } else {
                client.reject_invitation(id, "Other").await
            }
        }
    });
    for done in futures_util::future::join_all(calls).await {
        done.unwrap();
    }
    let mut at: Vec<_> = writes(&aws).into_iter().map(|w| w.at).collect();
    at.sort();
    assert_eq!(at.len(), 4);
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= chrono::Duration::seconds(1),
            "two writes {} ms apart: {at:?}",
            gap.num_milliseconds()
        );
    }
}

#[tokio::test]
async fn refused_credentials_name_the_iam_action_and_nothing_is_written() {
    let (env, aws) = with_aws_answers().await;
    env.edit_config(|text| text.replace("answers-test-secret", "a-wrong-secret"));
    let out = env.run(&["decline", INVITATION, "--reason", "Other"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let said = stderr(&out);
    assert!(
        said.contains("partnercentral:GetEngagementInvitation"),
        "{said}"
    );
    assert!(said.contains("refused the credentials"), "{said}");
    assert!(
        aws.requests().is_empty(),
        "refused before any operation ran"
    );
    assert_eq!(aws.invitation(INVITATION).unwrap()["Status"], "PENDING");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_daemon_running_it_sends_the_commands_answers_one_write_a_second() {
    let (env, aws) = with_aws_answers().await;
    let mut daemon = crate::daemon::spawn_started(&env).await;
    // Three commands at once, each in its own process: the daemon sends all three.
    let ids = [
        "engi-sim0000000001",
        "engi-sim0000000003",
        "engi-sim0000000004",
    ];
    let env = &env;
    let commands = ids.iter().map(|id| async move {
        env.cli(&["decline", id, "--reason", "Duplicate of partner referral"])
            .await
    });
    for out in futures_util::future::join_all(commands).await {
        assert!(
            out.status.success(),
            "{}{}\nDAEMON LOG:\n{}",
            stdout(&out),
            stderr(&out),
            std::fs::read_to_string(env.dir.path().join("daemon.log")).unwrap_or_default()
        );
        assert!(
            stdout(&out).contains("declined in AWS Partner Central"),
            "{}",
            stdout(&out)
        );
    }
    let mut at: Vec<_> = writes(&aws).into_iter().map(|w| w.at).collect();
    at.sort();
    assert_eq!(at.len(), 3, "{:?}", aws.requests());
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= chrono::Duration::seconds(1),
            "writes {} ms apart",
            gap.num_milliseconds()
        );
    }
    for id in ids {
        assert_eq!(aws.invitation(id).unwrap()["Status"], "REJECTED");
    }
    crate::daemon::kill(&daemon, "-TERM");
    let _ = daemon.wait().await;
}

#[tokio::test]
async fn a_rule_answers_an_invitation_through_aws() {
    let (env, aws) = with_stored_invitation().await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!(
            r#"{text}
[triage]
mode = "apply"
max_answers_per_hour = 10

[[rules]]
name = "tailspin-elsewhere"
# The customer of the invitation's payload (spec §7's AWS column): one of the four.
source = "aws"
customer = "^Tailspin"
not_countries = ["US"]
action = "decline"
reason = "Duplicate of partner referral"
"#
        ),
    )
    .unwrap();
    let sync = env.run(&["sync"]).await;
    assert_eq!(sync.status.code(), Some(0), "{}", stderr(&sync));
    let rejects = of(&aws.requests(), REJECT);
    assert_eq!(rejects.len(), 1, "{:?}", aws.requests());
    assert_eq!(
        rejects[0].body["RejectionReason"],
        "Duplicate of partner referral"
    );
    let (kind, state): (String, String) = env.query(
        "SELECT kind, state FROM outbox WHERE referral_id = 'engi-sim0000000002'",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!((kind.as_str(), state.as_str()), ("aws_decline", "done"));
    let audit = stdout(&env.run(&["audit", "--referral", INVITATION]).await);
    assert!(audit.contains("rule:tailspin-elsewhere"), "{audit}");
}

#[tokio::test]
async fn an_invitation_gone_from_aws_is_dead_at_once_not_retried() {
    let (env, aws) = with_aws_answers().await;
    let gone = "engi-0000000000zzz";
    let out = env.run(&["accept", gone]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("is gone"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ResourceNotFoundException"),
        "{}",
        stderr(&out)
    );
    let state: String = env.query(
        "SELECT state FROM outbox WHERE referral_id = 'engi-0000000000zzz'",
        |r| r.get(0),
    );
    assert_eq!(state, "dead", "an action_failed alert for a person");
    let requests = aws.requests();
    assert_eq!(requests.len(), 1, "read once, never retried: {requests:?}");
    assert_eq!(requests[0].operation, "GetEngagementInvitation");
}

/// AWS answers in order, by operation (a wiremock server as `[aws] endpoint`): for the
/// answers the simulator cannot stage, a conflict and a validation error.
async fn scripted(script: &[(&str, u16, Value)]) -> wiremock::MockServer {
    use wiremock::matchers::{header, method};
    use wiremock::{Mock, ResponseTemplate};
    let server = wiremock::MockServer::start().await;
    for (operation, status, body) in script {
        Mock::given(method("POST"))
            .and(header(
                "x-amz-target",
                format!("AWSPartnerCentralSelling.{operation}").as_str(),
            ))
            .respond_with(ResponseTemplate::new(*status).set_body_json(body.clone()))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
    }
    server
}

fn invitation_reading(status: &str) -> Value {
    serde_json::json!({"Id": INVITATION, "Catalog": "AWS", "Status": status})
}

async fn operations(server: &wiremock::MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("x-amz-target")?
                .to_str()
                .ok()
                .map(str::to_string)
        })
        .map(|t| {
            t.trim_start_matches("AWSPartnerCentralSelling.")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_conflict_reads_the_invitation_again_and_decides_again() {
    let (env, aws) = with_aws_answers().await;
    let server = scripted(&[
        (
            "GetEngagementInvitation",
            200,
            invitation_reading("PENDING"),
        ),
        (
            START,
            400,
            serde_json::json!({"__type": "com.amazonaws#ConflictException", "message": "changed"}),
        ),
        (
            "GetEngagementInvitation",
            200,
            invitation_reading("ACCEPTED"),
        ),
        (
            LIST_TASKS,
            200,
            serde_json::json!({"TaskSummaries": [{"TaskId": "task-0000000000009",
                "TaskStatus": "COMPLETE", "OpportunityId": "O123"}]}),
        ),
    ])
    .await;
    env.edit_config(|t| {
        t.replace(
            &format!("endpoint = \"{}\"", aws.endpoint()),
            &format!("endpoint = \"{}\"", server.uri()),
        )
    });
    let out = env.run(&["accept", INVITATION]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("already accepted"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("O123"), "{}", stdout(&out));
    assert_eq!(
        operations(&server).await,
        [
            "GetEngagementInvitation",
            START,
            "GetEngagementInvitation",
            LIST_TASKS
        ]
    );
}

#[tokio::test]
async fn a_validation_error_is_dead_with_its_field_list() {
    let (env, aws) = with_aws_answers().await;
    let server = scripted(&[
        ("GetEngagementInvitation", 200, invitation_reading("PENDING")),
        (
            REJECT,
            400,
            serde_json::json!({"__type": "com.amazonaws#ValidationException", "message": "bad",
                "Reason": "REQUEST_VALIDATION_FAILED",
                "ErrorList": [{"FieldName": "RejectionReason", "Message": "not allowed", "Code": "INVALID_VALUE"}]}),
        ),
    ])
    .await;
    env.edit_config(|t| {
        t.replace(
            &format!("endpoint = \"{}\"", aws.endpoint()),
            &format!("endpoint = \"{}\"", server.uri()),
        )
    });
    let out = env.run(&["decline", INVITATION, "--reason", "Other"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let said = stderr(&out);
    assert!(
        said.contains("RejectionReason: not allowed (INVALID_VALUE)"),
        "{said}"
    );
    let (state, error): (String, String) = env.query(
        "SELECT state, last_error FROM outbox WHERE kind = 'aws_decline'",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(state, "dead");
    assert!(error.contains("RejectionReason: not allowed"), "{error}");
    assert_eq!(
        operations(&server).await,
        ["GetEngagementInvitation", REJECT],
        "never retried"
    );
}
