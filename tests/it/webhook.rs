//! Partner Center webhooks against the simulator: a signed event becomes a lead without a
//! cycle; repeats (also across a kill) make exactly one lead; every forgery is refused with no
//! Partner Center request; with every event dropped, polling still forwards everything; and
//! `webhook register|show|test|unregister`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cosell_sync::app::App;
use cosell_sync::config::Config;
use cosell_sync::sim::sample;
use cosell_sync::sim::webhook::{Delivery, Forgery};
use tokio_util::sync::CancellationToken;

use crate::helpers::{stderr, stdout, wait_until, TestEnv, BIN};

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

/// The daemon's parts in this process: the app (worker), a bare deadline lane (the one
/// executor) and the receiver + forwarder that wakes it.
async fn start_in_process(h: &Hooked) -> (Arc<App>, CancellationToken) {
    let config = Config::load(&h.env.config).unwrap().config;
    let webhook = config.webhook.clone().unwrap();
    let mut app = App::build(config).unwrap();
    app.become_worker().unwrap();
    let app = Arc::new(app);
    let stop = CancellationToken::new();
    let wake = cosell_sync::wake::DeadlineWake::new();
    tokio::spawn(app.clone().serve_wakes(wake.clone(), stop.clone()));
    let a = app.clone();
    cosell_sync::webhook::start(&webhook, move || a.webhook_handoff(&wake), stop.clone())
        .await
        .unwrap();
    h.env.sim.register_webhook(&h.public_url);
    (app, stop)
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

/// Every stored event is processed or given up on (none waits for a forward).
fn all_settled(h: &Hooked) -> bool {
    let open = "SELECT COUNT(*) FROM webhook_events WHERE state = 'accepted'";
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    rusqlite::Connection::open_with_flags(h.env.state_db(), flags)
        .and_then(|c| c.query_row(open, [], |r| r.get::<_, i64>(0)))
        .is_ok_and(|n| n == 0)
}

#[tokio::test]
async fn a_new_referral_arrives_by_webhook_and_becomes_one_lead_without_a_pull() {
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
    // Only a tick without a pull ran: nothing was listed, and no Google record was read.
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
    // The copies are recognised as duplicates; once every stored event is settled, nothing
    // more has been created.
    assert!(wait_until(Duration::from_secs(10), || counter(&h, "duplicate") >= 15).await);
    assert!(wait_until(Duration::from_secs(10), || all_settled(&h)).await);
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
    // The next process replays it at start-up (once the old receiver let go of its port);
    // then the sim repeats everything once more.
    let addr = h
        .public_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpListener::bind(
            &addr
        )
        .is_ok())
        .await
    );
    let (_app, _stop) = start_in_process(&h).await;
    assert!(wait_until(Duration::from_secs(20), || leads_for(&h, &id) == 1).await);
    let received = counter(&h, "received");
    h.env.sim.send_referral_event(&id, true);
    h.env.sim.send_referral_event(&id, false);
    // Two events, each delivered three times (repeat: 2), all stored and settled.
    let open = "SELECT COUNT(*) FROM webhook_events WHERE state = 'accepted'";
    assert!(
        wait_until(Duration::from_secs(20), || counter(&h, "received")
            >= received + 6
            && h.env.query(open, |r| r.get::<_, i64>(0)) == 0)
        .await
    );
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
        // A failing assertion must not leave a daemon running.
        .kill_on_drop(true)
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
    wait_until(Duration::from_secs(10), || all_settled(&h)).await;
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
    assert!(
        wait_until(Duration::from_secs(10), || h
            .env
            .sim
            .counter("webhook:dropped")
            == 30)
        .await
    );
    assert!(h.env.sim.google_leads().is_empty());
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
async fn an_urgent_referral_arriving_by_webhook_alerts_the_sink_without_a_pull() {
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
    // Raised by the deadline lane's one alert path, after a tick that listed nothing.
    assert_eq!(h.env.sim.counter("list"), 0);
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
    // Refusals are added to the database's counter in batches, a moment after their 401.
    assert!(wait_until(Duration::from_secs(10), || counter(&h, "rejected") == 120).await);
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
    assert!(wait_until(Duration::from_secs(20), || all_settled(&h)).await);
    assert!(h.env.sim.leads_per_external_id().values().all(|n| *n == 1));
    assert_eq!(h.env.sim.google_leads().len(), ids.len());
}

/// One executor: webhook events and the daemon's cycles (every second) racing on the same new
/// referrals never have more than `[sync] concurrency` lead creates on the wire at once (the
/// creates in doubt after a crash), and no action records a reason that did not happen.
#[tokio::test(flavor = "multi_thread")]
async fn webhook_events_and_cycles_share_one_executor_and_one_concurrency() {
    let h = hooked("").await;
    h.env.edit_config(|t| {
        let t = t.replacen("[sync]\n", "[sync]\nconcurrency = 1\n", 1);
        format!("{t}\n[schedule]\nsync = \"*/1 * * * * *\"\n")
    });
    h.env.sim.set_create_latency(Duration::from_millis(150));
    h.env.sim.register_webhook(&h.public_url);
    let log = h.env.dir.path().join("daemon.log");
    let mut daemon = spawn_daemon(&h.env, &log);
    let ids: Vec<String> = (40..52).map(sample::referral_id).collect();
    h.env
        .sim
        .put_referrals((40..52).map(|i| {
            sample::referral(i, Utc::now(), chrono::Duration::hours(6), "New", "Pending")
        }));
    let all_one = wait_until(Duration::from_secs(40), || {
        ids.iter().all(|id| leads_for(&h, id) == 1)
    })
    .await;
    let settled = wait_until(Duration::from_secs(20), || all_settled(&h)).await;
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(all_one && settled, "{daemon_log}");
    assert_eq!(
        h.env.sim.max_creates_in_flight(),
        1,
        "two executors: more creates in doubt than [sync] concurrency"
    );
    let wrong: i64 = h.env.query(
        "SELECT (SELECT COUNT(*) FROM outbox WHERE COALESCE(result, '') || COALESCE(last_error, '') LIKE '%operator%')
              + (SELECT COUNT(*) FROM audit_log WHERE COALESCE(detail, '') LIKE '%operator%')",
        |r| r.get(0),
    );
    assert_eq!(wrong, 0, "a reason recorded that did not happen");
}

/// `[webhook] listen` equal to `[metrics] listen` (or overlapping it through 0.0.0.0) is a
/// configuration error naming both keys, caught by `check-config`, not a crash of `run`.
#[tokio::test]
async fn a_webhook_and_metrics_listen_clash_is_a_config_error() {
    let h = hooked("").await;
    let listen = h
        .public_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let port = listen.rsplit(':').next().unwrap().to_string();
    let original = std::fs::read_to_string(&h.env.config).unwrap();
    for metrics in [listen.clone(), format!("0.0.0.0:{port}")] {
        h.env
            .edit_config(|_| format!("{original}\n[metrics]\nlisten = \"{metrics}\"\n"));
        let out = h.env.cli(&["check-config"]).await;
        assert_eq!(out.status.code(), Some(78), "{metrics}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("metrics.listen") && err.contains("webhook.listen"),
            "{err}"
        );
    }
}

/// An address already in use is a configuration error (78) found before the first token is
/// asked for: under `Restart=on-failure` a restart loop would redeem the refresh token each
/// time.
#[tokio::test]
async fn run_with_its_webhook_address_taken_exits_78_before_any_token_grant() {
    let h = hooked("").await;
    let listen = h
        .public_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let _taken = std::net::TcpListener::bind(&listen).unwrap();
    let out = h.env.cli(&["run"]).await;
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains("webhook.listen"), "{}", stderr(&out));
    assert_eq!(h.env.sim.counter("token"), 0);
}

/// Forged events (each naming its own missing certificate) from 16 clients at once.
async fn flood_of_forgeries(public_url: &str, prefix: &str, round: usize, n: usize) {
    let client = cosell_sync::http::client_builder().build().unwrap();
    let body = r#"{"EventName":"referral-created","ResourceUri":"https://x/engagements/v1/referrals/forged"}"#;
    let signature = cosell_sync::sim::webhook::sign(body.as_bytes());
    let mut sent = Vec::new();
    for worker in 0..16 {
        let (client, url, prefix, sig) = (
            client.clone(),
            public_url.to_string(),
            prefix.to_string(),
            signature.clone(),
        );
        sent.push(tokio::spawn(async move {
            for i in (worker..n).step_by(16) {
                let status = client
                    .post(&url)
                    .header("authorization", format!("Signature {sig}"))
                    .header("x-ms-signature-algorithm", "rsa-sha256")
                    .header(
                        "x-ms-certificate-url",
                        format!("{prefix}missing-{round}-{i}.cer"),
                    )
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 401);
            }
        }));
    }
    for s in sent {
        s.await.unwrap();
    }
}

/// The daemon (a tick every second writing alongside the receiver) takes floods of forgeries
/// and genuine events before and after ten SIGHUP reloads: no write fails with "database is
/// locked", every genuine event makes its lead, every forgery is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_before_and_after_ten_reloads_never_hit_database_is_locked() {
    let h = hooked("").await;
    h.env
        .edit_config(|t| format!("{t}\n[schedule]\nsync = \"*/1 * * * * *\"\n"));
    let log = h.env.dir.path().join("daemon.log");
    h.env.sim.register_webhook(&h.public_url);
    let daemon = spawn_daemon(&h.env, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || read_log()
            .contains("daemon started"))
        .await,
        "{}",
        read_log()
    );
    let prefix = h.env.sim.webhook_certificate_prefix();
    let mut ids = Vec::new();
    for round in 0..3 {
        let new: Vec<usize> = (300 + round * 4..304 + round * 4).collect();
        ids.extend(new.iter().map(|i| sample::referral_id(*i)));
        h.env.sim.put_referrals(new.iter().map(|i| {
            sample::referral(
                *i,
                Utc::now(),
                chrono::Duration::hours(10),
                "New",
                "Pending",
            )
        }));
        flood_of_forgeries(&h.public_url, &prefix, round, 300).await;
        if round < 2 {
            for reload in 1..=5 {
                let before = read_log().matches("configuration reloaded").count();
                crate::daemon::kill(&daemon, "-HUP");
                assert!(
                    wait_until(Duration::from_secs(10), || {
                        read_log().matches("configuration reloaded").count() > before
                    })
                    .await,
                    "reload {reload} of round {round}: {}",
                    read_log()
                );
            }
        }
    }
    assert!(
        wait_until(Duration::from_secs(30), || ids
            .iter()
            .all(|id| leads_for(&h, id) == 1))
        .await,
        "{:?}",
        h.env.sim.leads_per_external_id()
    );
    assert!(wait_until(Duration::from_secs(10), || counter(&h, "rejected") == 900).await);
    crate::daemon::kill(&daemon, "-TERM");
    let log = read_log();
    assert_eq!(log.matches("configuration reloaded").count(), 10);
    assert!(!log.contains("database is locked"), "{log}");
}

/// A body past 64 KiB is refused with 413 without being read whole (here 8 MiB, streamed),
/// and the refusal is counted by the server layer the receiver runs on.
#[tokio::test]
async fn an_oversized_event_body_gets_413_and_is_counted_by_the_server_layer() {
    let h = hooked("").await;
    let (_app, _stop) = start_in_process(&h).await;
    let before = too_large_count();
    // Chunked, no length: the limit must stop the read itself.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, path) = h
        .public_url
        .trim_start_matches("http://")
        .split_once('/')
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /{path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("10000\r\n{}\r\n", "{".repeat(0x10000));
    for _ in 0..128 {
        // The daemon may answer 413 and close before everything is sent.
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut answer = vec![0u8; 64];
    let n = s.read(&mut answer).await.unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(wait_until(Duration::from_secs(5), || too_large_count() > before).await);
}

fn too_large_count() -> u64 {
    let text = cosell_sync::metrics::global().render();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(
                "cosell_http_rejected_total{listener=\"webhook\",reason=\"body_too_large\"} ",
            )
        })
        .map_or(0, |n| n.trim().parse().unwrap())
}
