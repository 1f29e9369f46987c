//! Partner Center webhooks against the simulator: a signed event becomes a lead without a
//! cycle; repeats (also across a kill) make exactly one lead; every forgery is refused with no
//! Partner Center request; with every event dropped, polling still forwards everything; and
//! `webhook register|show|test|unregister`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use cosell_sync::app::App;
use cosell_sync::config::Config;
use cosell_sync::sim::sample;
use cosell_sync::sim::webhook::{Delivery, Forgery};
use tokio_util::sync::CancellationToken;

use crate::helpers::{stderr, stdout, TestEnv, BIN};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A simulator with the Google side and a `[webhook]` section trusting its test CA.
struct Hooked {
    env: TestEnv,
    public_url: String,
}

async fn hooked(extra: &str) -> Hooked {
    let port = free_port();
    let env = TestEnv::with_google("").await;
    let ca = env.dir.path().join("sim-ca.pem");
    std::fs::write(&ca, env.sim.webhook_ca_pem()).unwrap();
    let public_url = format!("http://127.0.0.1:{port}/partner-center/events");
    let section = format!(
        r#"
[webhook]
listen = "127.0.0.1:{port}"
public_url = "{public_url}"
certificate_url_prefixes = ["{prefix}"]
ca_file = "{ca}"
api_base = "{base}"
sweep_interval = "1s"
{extra}
"#,
        prefix = env.sim.webhook_certificate_prefix(),
        ca = ca.display(),
        base = env.sim.base_url(),
    );
    env.edit_config(|text| format!("{text}{section}"));
    Hooked { env, public_url }
}

/// The daemon's parts in this process: the app (worker) and the receiver + forwarder.
async fn start_in_process(h: &Hooked) -> (Arc<App>, CancellationToken) {
    let config = Config::load(&h.env.config).unwrap().config;
    let webhook = config.webhook.clone().unwrap();
    let mut app = App::build(config).unwrap();
    app.become_worker().unwrap();
    let app = Arc::new(app);
    let stop = CancellationToken::new();
    let a = app.clone();
    cosell_sync::webhook::start(&webhook, move || a.webhook_handoff(), stop.clone())
        .await
        .unwrap();
    h.env.sim.register_webhook(&h.public_url);
    (app, stop)
}

async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

fn leads_for(h: &Hooked, id: &str) -> usize {
    h.env
        .sim
        .leads_per_external_id()
        .get(id)
        .copied()
        .unwrap_or(0)
}

/// A webhook counter; 0 while the database (or its table) does not exist yet, since a
/// test may poll before the daemon it started has migrated the database.
fn counter(h: &Hooked, name: &str) -> i64 {
    let sql =
        format!("SELECT COALESCE((SELECT value FROM webhook_counters WHERE name = '{name}'), 0)");
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    rusqlite::Connection::open_with_flags(h.env.state_db(), flags)
        .and_then(|c| c.query_row(&sql, [], |r| r.get(0)))
        .unwrap_or(0)
}

#[tokio::test]
async fn a_new_referral_arrives_by_webhook_and_becomes_one_lead_without_a_cycle() {
    let h = hooked("").await;
    let (_app, _stop) = start_in_process(&h).await;
    let id = sample::referral_id(1);
    h.env.sim.put_referrals([sample::referral(
        1,
        Utc::now(),
        chrono::Duration::hours(2),
        "New",
        "Pending",
    )]);
    assert!(
        wait_until(Duration::from_secs(20), || leads_for(&h, &id) == 1).await,
        "no lead from the webhook event"
    );
    // No cycle ran, nothing was listed, and no Google record was read: the event alone did it.
    let cycles: i64 = h.env.query("SELECT COUNT(*) FROM cycle_runs", |r| r.get(0));
    assert_eq!(cycles, 0);
    assert_eq!(h.env.sim.counter("list"), 0);
    assert_eq!(h.env.sim.counter("google.get_lead"), 0);
    assert!(h.env.sim.counter("get") >= 1);
    // The lead name is written back to the referral, and the event is processed with its time.
    assert!(
        wait_until(Duration::from_secs(10), || h
            .env
            .sim
            .referral(&id)
            .is_some_and(|r| r["externalReferenceId"]
                .as_str()
                .is_some_and(|s| s.contains("leads/"))))
        .await
    );
    let created = "SELECT state, lead_ms FROM webhook_events WHERE event_name = 'referral-created'";
    let processed = || {
        let state: String = h.env.query(created, |r| r.get(0));
        state == "processed"
    };
    assert!(wait_until(Duration::from_secs(10), processed).await);
    let lead_ms: Option<i64> = h.env.query(created, |r| r.get(1));
    assert!(lead_ms.is_some_and(|ms| ms >= 0));
    let status = h.env.cli(&["status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        json["webhooks"]["verified"].as_u64().unwrap() >= 1,
        "{json}"
    );
}

#[tokio::test]
async fn every_event_delivered_four_times_makes_exactly_one_lead() {
    let h = hooked("").await;
    h.env.sim.set_webhook_delivery(Delivery {
        repeat: 3,
        ..Delivery::default()
    });
    let (_app, _stop) = start_in_process(&h).await;
    let referrals: Vec<_> = (10..15)
        .map(|i| sample::referral(i, Utc::now(), chrono::Duration::hours(30), "New", "Pending"))
        .collect();
    h.env.sim.put_referrals(referrals);
    let ids: Vec<String> = (10..15).map(sample::referral_id).collect();
    assert!(
        wait_until(Duration::from_secs(30), || ids
            .iter()
            .all(|id| leads_for(&h, id) == 1))
        .await,
        "{:?}",
        h.env.sim.leads_per_external_id()
    );
    // The copies are recognised as duplicates; a little later nothing more has been created.
    assert!(wait_until(Duration::from_secs(10), || counter(&h, "duplicate") >= 15).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        assert_eq!(leads_for(&h, id), 1, "{id}");
    }
    assert_eq!(h.env.sim.google_leads().len(), 5);
}

#[tokio::test]
async fn forged_unsigned_wrong_algorithm_and_foreign_host_events_are_refused_without_a_partner_center_request(
) {
    let h = hooked("").await;
    let (_app, _stop) = start_in_process(&h).await;
    let forgeries = [
        Forgery::TamperedBody,
        Forgery::Unsigned,
        Forgery::WrongAlgorithm,
        Forgery::ForeignHost,
        Forgery::UntrustedCertificate,
    ];
    for (n, forgery) in forgeries.iter().enumerate() {
        h.env.sim.set_webhook_delivery(Delivery {
            forge: Some(*forgery),
            ..Delivery::default()
        });
        let i = 100 + n;
        h.env.sim.put_referrals([sample::referral(
            i,
            Utc::now(),
            chrono::Duration::hours(1),
            "New",
            "Pending",
        )]);
        assert!(
            wait_until(Duration::from_secs(10), || counter(&h, "rejected")
                == n as i64 + 1)
            .await,
            "{forgery:?} not rejected"
        );
    }
    // None reached the Referrals API (no GET, no list), none was stored, no lead exists.
    assert_eq!(h.env.sim.counter("get"), 0);
    assert_eq!(h.env.sim.counter("list"), 0);
    assert!(h.env.sim.google_leads().is_empty());
    let stored: i64 = h
        .env
        .query("SELECT COUNT(*) FROM webhook_events", |r| r.get(0));
    assert_eq!(stored, 0);
    assert_eq!(counter(&h, "verified"), 0);
    // Unsigned, wrong-algorithm and foreign-host events are refused before any fetch: only the
    // tampered and the untrusted ones made the receiver fetch a certificate (from the trusted
    // prefix).
    assert_eq!(h.env.sim.counter("webhook:certificate"), 2);
}

#[tokio::test]
async fn an_event_accepted_before_a_crash_is_forwarded_at_start_up_exactly_once() {
    let h = hooked("").await;
    let config = Config::load(&h.env.config).unwrap().config;
    let webhook = config.webhook.clone().unwrap();
    // A receiver whose forwarder never runs: the process "dies" after answering 200.
    let store = cosell_sync::store::Store::open(&config.state.path).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stop = CancellationToken::new();
    cosell_sync::webhook::receiver::serve(&webhook, store, tx, stop.clone())
        .await
        .unwrap();
    h.env.sim.register_webhook(&h.public_url);
    h.env.sim.set_webhook_delivery(Delivery {
        repeat: 2,
        ..Delivery::default()
    });
    let id = sample::referral_id(7);
    h.env.sim.put_referrals([sample::referral(
        7,
        Utc::now(),
        chrono::Duration::hours(5),
        "New",
        "Pending",
    )]);
    assert!(wait_until(Duration::from_secs(10), || counter(&h, "duplicate") == 2).await);
    stop.cancel();
    drop(rx);
    assert_eq!(leads_for(&h, &id), 0);
    let open: i64 = h.env.query(
        "SELECT COUNT(*) FROM webhook_events WHERE state = 'accepted'",
        |r| r.get(0),
    );
    assert_eq!(open, 1);
    // The next process replays it at start-up; then the sim repeats everything once more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_app, _stop) = start_in_process(&h).await;
    assert!(wait_until(Duration::from_secs(20), || leads_for(&h, &id) == 1).await);
    h.env.sim.send_referral_event(&id, true);
    h.env.sim.send_referral_event(&id, false);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(leads_for(&h, &id), 1);
    let open: i64 = h.env.query(
        "SELECT COUNT(*) FROM webhook_events WHERE state = 'accepted'",
        |r| r.get(0),
    );
    assert_eq!(open, 0);
}

fn spawn_daemon(env: &TestEnv, log: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn events_repeated_across_a_kill_of_the_daemon_make_exactly_one_lead_each() {
    // A schedule that never fires during the test: only the events drive the daemon.
    let h = hooked("").await;
    h.env.edit_config(|t| {
        format!("{t}\n[schedule]\nsync = \"0 0 0 1 1 *\"\n[daemon]\nsync_on_start = false\n")
    });
    let log = h.env.dir.path().join("daemon.log");
    h.env.sim.register_webhook(&h.public_url);
    h.env.sim.set_webhook_delivery(Delivery {
        repeat: 3,
        ..Delivery::default()
    });
    let mut daemon = spawn_daemon(&h.env, &log);
    let port: u16 = h
        .public_url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok())
        .await,
        "receiver not up: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let ids: Vec<String> = (20..26).map(sample::referral_id).collect();
    h.env.sim.put_referrals(
        (20..26).map(|i| {
            sample::referral(i, Utc::now(), chrono::Duration::hours(10), "New", "Pending")
        }),
    );
    // Kill -9 as soon as the first event is stored: some are forwarded, some not, some not
    // even received (the simulator retries those against the restarted daemon).
    assert!(wait_until(Duration::from_secs(20), || counter(&h, "verified") >= 1).await);
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    let mut daemon = spawn_daemon(&h.env, &log.with_extension("2"));
    let all_one = wait_until(Duration::from_secs(40), || {
        ids.iter().all(|id| leads_for(&h, id) == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    // A lead create cut by the kill is quarantined for a person, never repeated: at most one
    // lead per referral, whatever the timing; with this timing, each got exactly one.
    for id in &ids {
        assert!(
            leads_for(&h, id) <= 1,
            "{id}: {:?}",
            h.env.sim.leads_per_external_id()
        );
    }
    let quarantined: i64 = h.env.query(
        "SELECT COUNT(*) FROM outbox WHERE state = 'quarantined'",
        |r| r.get(0),
    );
    assert!(
        all_one || quarantined > 0,
        "{:?}",
        h.env.sim.leads_per_external_id()
    );
}

#[tokio::test]
async fn with_every_event_dropped_polling_still_forwards_everything() {
    let h = hooked("").await;
    h.env.sim.set_webhook_delivery(Delivery {
        drop_all: true,
        ..Delivery::default()
    });
    let (app, _stop) = start_in_process(&h).await;
    h.env
        .sim
        .put_referrals(sample::pending_inbox(30, Utc::now()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.env.sim.google_leads().is_empty());
    assert_eq!(h.env.sim.counter("webhook:dropped"), 30);
    let cycle = app.sync_once().await;
    assert!(cycle.report.ok(), "{:?}", cycle.report.error);
    let leads = h.env.sim.leads_per_external_id();
    assert_eq!(leads.len(), 30);
    assert!(leads.values().all(|n| *n == 1));
}

#[tokio::test]
async fn webhook_register_show_test_and_unregister() {
    let h = hooked("").await;
    let out = h.env.cli(&["webhook", "show"]).await;
    assert!(
        stdout(&out).contains("no registration"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = h.env.cli(&["webhook", "register"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let (url, events) = h.env.sim.webhook_registration().unwrap();
    assert_eq!(url, h.public_url);
    assert!(events.iter().any(|e| e == "referral-created"));
    assert!(events.iter().any(|e| e == "test-created"));
    // Registering again replaces (PUT), it does not fail.
    let out = h.env.cli(&["webhook", "register"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = h.env.cli(&["webhook", "show"]).await;
    assert!(stdout(&out).contains(&h.public_url), "{}", stdout(&out));
    // No daemon runs: `test` serves a temporary receiver and sees the event verified.
    let out = h.env.cli(&["webhook", "test", "--wait", "20"]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("arrived and verified"),
        "{}",
        stdout(&out)
    );
    // With a receiver that expects another certificate subject, the test says so and fails.
    h.env
        .edit_config(|t| format!("{t}certificate_subject = \"someone-else.example\"\n"));
    let out = h.env.cli(&["webhook", "test", "--wait", "20"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("failed verification"),
        "{}",
        stderr(&out)
    );
    let out = h.env.cli(&["webhook", "unregister"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(h.env.sim.webhook_registration().is_none());
}

#[tokio::test]
async fn a_bad_webhook_key_exits_78_naming_it_and_no_section_means_off() {
    let h = hooked("").await;
    h.env
        .edit_config(|t| t.replace("listen = \"127.0.0.1:", "listen = \"nowhere:"));
    let out = h.env.cli(&["check-config"]).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("webhook.listen"), "{}", stderr(&out));
    let env = TestEnv::new().await;
    let out = env.cli(&["webhook", "show"]).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("[webhook]"), "{}", stderr(&out));
}

#[tokio::test]
async fn an_urgent_referral_arriving_by_webhook_alerts_the_sink_without_a_cycle() {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let sink = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&sink)
        .await;
    let h = hooked("").await;
    h.env.edit_config(|t| {
        format!(
            "{t}\n[[alerts.webhook]]\nurl = \"{}/hook\"\nformat = \"json\"\n",
            sink.uri()
        )
    });
    let (_app, _stop) = start_in_process(&h).await;
    // 14 days minus 3 hours old: inside the 4h threshold.
    let age = chrono::Duration::days(14) - chrono::Duration::hours(3);
    h.env
        .sim
        .put_referrals([sample::referral(40, Utc::now(), age, "New", "Pending")]);
    let expected = format!("referral_expiring:{}:4h", sample::referral_id(40));
    let mut got = Vec::new();
    for _ in 0..500 {
        got = sink.received_requests().await.unwrap_or_default();
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body: serde_json::Value =
        serde_json::from_slice(&got.first().expect("alert delivered").body).unwrap();
    assert_eq!(body["id"], expected.as_str());
    let cycles: i64 = h.env.query("SELECT COUNT(*) FROM cycle_runs", |r| r.get(0));
    assert_eq!(cycles, 0);
}

/// Genuine signed requests, each changed in one generated way (a body byte, a signature byte,
/// a header dropped or altered, a certificate URL elsewhere): every one is refused with 401,
/// nothing is stored, and Partner Center is never called.
#[tokio::test]
async fn generated_tamperings_of_a_signed_event_are_all_refused() {
    let h = hooked("").await;
    let (_app, _stop) = start_in_process(&h).await;
    let mut rng = fastrand::Rng::with_seed(12);
    let client = cosell_sync::http::client_builder().build().unwrap();
    let body = format!(
        r#"{{"EventName":"referral-created","ResourceUri":"https://api.partnercenter.microsoft.com/engagements/v1/referrals/{}","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2026-01-01T00:00:00Z"}}"#,
        sample::referral_id(50)
    );
    let genuine = h.env.sim.sign_event(&body);
    let prefix = h.env.sim.webhook_certificate_prefix();
    for case in 0..120 {
        let mut body = body.clone().into_bytes();
        let mut headers = genuine.clone();
        match case % 6 {
            0 => {
                let i = rng.usize(..body.len());
                body[i] ^= 1 << rng.u8(..8);
            }
            1 => {
                let (_, auth) = headers
                    .iter_mut()
                    .find(|(k, _)| *k == "authorization")
                    .unwrap();
                let mut sig: Vec<char> = auth["Signature ".len()..].chars().collect();
                let i = rng.usize(..sig.len().saturating_sub(2));
                sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
                *auth = format!("Signature {}", sig.into_iter().collect::<String>());
            }
            2 => {
                let gone = [
                    "authorization",
                    "x-ms-certificate-url",
                    "x-ms-signature-algorithm",
                ][rng.usize(..3)];
                headers.retain(|(k, _)| *k != gone);
            }
            3 => {
                let (_, alg) = headers
                    .iter_mut()
                    .find(|(k, _)| *k == "x-ms-signature-algorithm")
                    .unwrap();
                *alg = ["rsa-sha1", "hmac-sha256", "", "none", "rsa-sha512"][rng.usize(..5)].into();
            }
            4 => {
                let (_, url) = headers
                    .iter_mut()
                    .find(|(k, _)| *k == "x-ms-certificate-url")
                    .unwrap();
                let port = prefix
                    .trim_start_matches("http://127.0.0.1:")
                    .trim_end_matches("/cert/");
                *url = [
                    format!("http://localhost:{port}/cert/pcnotifications-dispatch.microsoft.com.cer"),
                    format!("http://127.0.0.1:{port}/certs/pcnotifications-dispatch.microsoft.com.cer"),
                    format!("http://127.0.0.1:{port}/cert/../cert2/x.cer"),
                    format!("http://user@127.0.0.1:{port}/cert/pcnotifications-dispatch.microsoft.com.cer"),
                    format!("{prefix}untrusted.cer"),
                    format!("{prefix}missing.cer"),
                ][rng.usize(..6)]
                    .clone();
            }
            _ => {
                let (_, auth) = headers
                    .iter_mut()
                    .find(|(k, _)| *k == "authorization")
                    .unwrap();
                *auth = [
                    "Signature",
                    "Signature ",
                    "Bearer x",
                    "Signature ====",
                    "signature AAAA",
                ][rng.usize(..5)]
                .into();
            }
        }
        let mut request = client.post(&h.public_url).body(body);
        for (k, v) in &headers {
            request = request.header(*k, v);
        }
        let status = request.send().await.unwrap().status().as_u16();
        assert_eq!(status, 401, "case {case}: {headers:?}");
    }
    assert_eq!(h.env.sim.counter("get"), 0);
    assert_eq!(counter(&h, "rejected"), 120);
    let stored: i64 = h
        .env
        .query("SELECT COUNT(*) FROM webhook_events", |r| r.get(0));
    assert_eq!(stored, 0);
    // The untampered request is accepted: the generator changed something every time.
    let mut request = client.post(&h.public_url).body(body);
    for (k, v) in &genuine {
        request = request.header(*k, v);
    }
    assert_eq!(request.send().await.unwrap().status().as_u16(), 200);
}

/// The forwarder and a cycle working on the same new referrals at the same time: the outbox's
/// one-create-per-referral index and atomic claims leave exactly one lead each.
#[tokio::test(flavor = "multi_thread")]
async fn events_racing_a_cycle_on_the_same_referrals_make_one_lead_each() {
    let h = hooked("").await;
    h.env.sim.set_webhook_delivery(Delivery {
        repeat: 2,
        ..Delivery::default()
    });
    let (app, _stop) = start_in_process(&h).await;
    let ids: Vec<String> = (60..90).map(sample::referral_id).collect();
    h.env
        .sim
        .put_referrals((60..90).map(|i| {
            sample::referral(i, Utc::now(), chrono::Duration::hours(8), "New", "Pending")
        }));
    let (first, second) = tokio::join!(app.sync_once(), app.sync_once());
    assert!(first.report.ok() || second.report.ok());
    assert!(
        wait_until(Duration::from_secs(30), || ids
            .iter()
            .all(|id| leads_for(&h, id) == 1))
        .await,
        "{:?}",
        h.env.sim.leads_per_external_id()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.env.sim.leads_per_external_id().values().all(|n| *n == 1));
    assert_eq!(h.env.sim.google_leads().len(), ids.len());
}
