//! The two lanes (issue "deadline first"): the deadline lane never waits on Google re-reads;
//! the refresh lane reads on a per-record schedule that backs off and resets, never reads
//! final records, and stays inside its hourly budget. In-process where the clock is stepped;
//! the binary where the daemon's own scheduling is what is tested.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cosell_sync::app::App;
use cosell_sync::config::Config;
use cosell_sync::lanes;
use cosell_sync::sim::sample;
use cosell_sync::sync::refresh::refresh_pass;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{stderr, wait_until, wait_until_async, TestEnv, BIN};

/// The app as `run` builds it, in this process.
fn worker(env: &TestEnv) -> App {
    let loaded = Config::load(&env.config).expect("config loads");
    let mut app = App::build(loaded.config).expect("app builds");
    app.become_worker().expect("worker lock");
    app
}

/// Referrals tracked with a lead each: `n` Pending referrals synced once.
async fn tracked(env: &TestEnv, n: usize) {
    env.sim.put_referrals(sample::pending_inbox(n, Utc::now()));
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.sim.google_leads().len(), n);
}

/// A new referral created now with `hours_left` before its deadline.
fn urgent_referral(id: &str, hours_left: i64) -> serde_json::Value {
    let now = Utc::now();
    let mut r = sample::pending_inbox(1, now).remove(0);
    r["id"] = id.into();
    r["name"] = "Urgent Contoso deal".into();
    r["createdDateTime"] = (now - chrono::Duration::days(14) + chrono::Duration::hours(hours_left))
        .to_rfc3339()
        .into();
    r["updatedDateTime"] = now.to_rfc3339().into();
    r
}

/// Replaces the helpers' `[refresh]` settings (min_interval 0s) with `settings`.
fn set_refresh(env: &TestEnv, settings: &str) {
    env.edit_config(|c| {
        c.replace(
            "[refresh]\nmin_interval = \"0s\"",
            &format!("[refresh]\n{settings}"),
        )
    });
}

fn gets(env: &TestEnv) -> u64 {
    env.sim.counter("google.get_lead") + env.sim.counter("google.get_opportunity")
}

fn interval_s(env: &TestEnv, name: &str) -> i64 {
    env.query(
        &format!("SELECT interval_s FROM refresh_schedule WHERE name = '{name}'"),
        |r| r.get(0),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_tick_makes_no_google_read_and_does_not_wait_for_a_slow_refresh() {
    let env = TestEnv::with_google("").await;
    tracked(&env, 6).await;
    // Every Google read now takes 1 s: the refresh of 6 records, 2 at a time, takes ~3 s,
    // far longer than a deadline tick (and a read outlasts the tick: see below).
    env.sim.set_google_read_delay(Duration::from_secs(1));
    let app = std::sync::Arc::new(worker(&env));
    let reads_before = gets(&env);
    let refresh = {
        let app = app.clone();
        tokio::spawn(async move { lanes::refresh_once(&app.cycle).await })
    };
    // The refresh lane is reading.
    assert!(
        crate::helpers::wait_until(Duration::from_secs(10), || gets(&env) > reads_before).await
    );
    env.sim.put_referrals([urgent_referral("urgent-1", 3)]);
    let gets_before = gets(&env);
    let cycle = app.deadline_tick(false).await;
    assert!(cycle.report.ok(), "{:?}", cycle.report.error);
    assert!(
        !refresh.is_finished(),
        "the deadline tick finished while the refresh lane was still reading"
    );
    assert_eq!(
        env.sim.leads_per_external_id().get("urgent-1"),
        Some(&1),
        "the urgent referral has its lead"
    );
    let alerted: i64 = env.query(
        "SELECT COUNT(*) FROM alerts WHERE kind = 'referral_expiring' AND referral_id = 'urgent-1'",
        |r| r.get(0),
    );
    assert_eq!(alerted, 1, "the urgent referral is alerted");
    // Only the refresh lane reads (at most its 2 reads in flight ended during the tick).
    assert!(
        gets(&env) - gets_before <= 2,
        "the tick itself read nothing"
    );
    assert_eq!(cycle.report.google.fetched, 0);
    let stats = refresh.await.unwrap().expect("refresh pass");
    assert_eq!(stats.read, 6);
}

/// Each referral is planned once per change (issue 20). A first sync of N new referrals
/// plans each once, on its page: not again for the link its create made, the write-back's
/// answer, or the full plan at the end (it planned each about three times: CPU grew with it).
/// Then a full plan on the next sync plans each once more, and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_sync_plans_each_new_referral_once() {
    let env = TestEnv::with_google("").await;
    let n = 250;
    env.sim.put_referrals(sample::pending_inbox(n, Utc::now()));
    let app = worker(&env);
    let first = app.sync_once().await;
    assert!(first.report.ok(), "{:?}", first.report.error);
    assert_eq!(env.sim.google_leads().len(), n);
    assert_eq!(env.sim.counter("patch"), n as u64, "one write-back each");
    assert_eq!(
        first.report.planned.referrals, n as u64,
        "planned once each"
    );
    let queued: i64 = env.query("SELECT COUNT(*) FROM plan_queue", |r| r.get(0));
    assert_eq!(queued, 0, "nothing is left to plan");
    let writes = env.sim.counter("google.create_lead") + env.sim.counter("patch");
    let again = app.sync_once().await;
    assert!(again.report.ok(), "{:?}", again.report.error);
    assert_eq!(
        again.report.planned.referrals, n as u64,
        "the full plan, once each"
    );
    assert_eq!(again.report.planned.queued, 0);
    assert_eq!(
        env.sim.counter("google.create_lead") + env.sim.counter("patch"),
        writes
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_deadline_tick_plans_nothing_and_writes_nothing() {
    let env = TestEnv::with_google("").await;
    tracked(&env, 30).await;
    let app = worker(&env);
    // The first tick re-plans what the sync's own writes changed (links, write-backs).
    let settle = app.deadline_tick(false).await;
    assert!(settle.report.ok(), "{:?}", settle.report.error);
    assert_eq!(settle.report.planned.queued, 0, "nothing more to write");
    let writes_before = env.sim.counter("google.create_lead") + env.sim.counter("patch");
    let gets_before = gets(&env);
    let cycle = app.deadline_tick(false).await;
    assert!(cycle.report.ok(), "{:?}", cycle.report.error);
    assert_eq!(
        cycle.report.planned.referrals, 0,
        "nothing changed, nothing planned"
    );
    assert_eq!(cycle.report.pushed.done, 0);
    assert_eq!(
        env.sim.counter("google.create_lead") + env.sim.counter("patch"),
        writes_before
    );
    assert_eq!(gets(&env), gets_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_urgent_referral_gets_its_lead_before_the_rest_of_a_large_inbox_is_read() {
    let env = TestEnv::with_google("").await;
    tracked(&env, 250).await; // three inbox pages of 100
    let app = worker(&env);
    // Created 13 days and 21 hours ago, seen only now: the oldest in the inbox.
    env.sim.put_referrals([urgent_referral("late-1", 3)]);
    let before = env.sim.request_log().len();
    let cycle = app.deadline_tick(false).await;
    assert!(cycle.report.ok(), "{:?}", cycle.report.error);
    let log: Vec<String> = env.sim.request_log().split_off(before);
    let create = log.iter().position(|k| k == "google.create_lead");
    let lists: Vec<usize> = (0..log.len()).filter(|&i| log[i] == "list").collect();
    assert_eq!(
        lists.len(),
        3,
        "the whole inbox; changes are read in the background: {log:?}"
    );
    let create = create.expect("the late referral's lead was created");
    assert!(
        create < lists[1],
        "the lead was created before the second inbox page was read: {log:?}"
    );
    assert_eq!(env.sim.leads_per_external_id().get("late-1"), Some(&1));
    let alerted: i64 = env.query(
        "SELECT COUNT(*) FROM alerts WHERE referral_id = 'late-1' AND kind = 'referral_expiring'",
        |r| r.get(0),
    );
    assert_eq!(alerted, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_refresh_schedule_backs_off_on_unchanged_records_and_resets_on_change() {
    let env = TestEnv::with_google(
        "", // helpers set min_interval = 0s; this test sets its own below
    )
    .await;
    set_refresh(
        &env,
        "min_interval = \"1m\"\nmax_interval = \"10m\"\nhot_max_interval = \"4m\"",
    );
    tracked(&env, 3).await;
    let app = worker(&env);
    let google = app.cycle.google.as_ref().unwrap();
    let lead = env.sim.google_leads()[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let t0 = Utc::now();
    let pass = |at: DateTime<Utc>| refresh_pass(&app.store, google, &google.refresh, at);

    // Just created: the create's answer was the current copy, nothing is due yet.
    let p = pass(t0).await.unwrap();
    assert_eq!(p.read, 0, "{p:?}");
    let mut at = t0 + chrono::Duration::seconds(61);
    let mut expected = Vec::new();
    let mut seen = Vec::new();
    for step in [120, 240, 480, 600, 600] {
        let p = pass(at).await.unwrap();
        assert_eq!(p.read, 3, "all three due at {at}: {p:?}");
        assert_eq!(p.changed, 0);
        seen.push(interval_s(&env, &lead));
        expected.push(step);
        // Half-way to the next check nothing is read.
        let half = at + chrono::Duration::seconds(step / 2);
        assert_eq!(pass(half).await.unwrap().read, 0);
        at += chrono::Duration::seconds(step + 1);
    }
    assert_eq!(seen, expected, "doubling from 1m, capped at 10m");

    // Google converts the lead: the next read sees it, and a converted lead is final.
    assert!(env.sim.convert_lead(&lead, 9000).is_some());
    let p = pass(at).await.unwrap();
    assert_eq!(p.read, 3);
    assert_eq!(p.finalized, 1, "{p:?}");
    // A converted lead is final: never read again.
    let next: Option<String> = env.query(
        &format!("SELECT next_check_at FROM refresh_schedule WHERE name = '{lead}'"),
        |r| r.get(0),
    );
    assert_eq!(next, None, "a converted lead is not read again");
    let reads_of_others = pass(at + chrono::Duration::hours(2)).await.unwrap();
    assert_eq!(reads_of_others.read, 2, "only the two live leads are read");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_record_resets_its_interval() {
    let env = TestEnv::with_google("").await;
    set_refresh(&env, "min_interval = \"1m\"\nmax_interval = \"1h\"");
    tracked(&env, 1).await;
    let lead = env.sim.google_leads()[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let opp = env.sim.convert_lead(&lead, 77).unwrap();
    // Track the opportunity (in play: its cap is hot_max_interval, 30m by default).
    let out = env.cli(&["link", &sample::referral_id(0), &opp]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let app = worker(&env);
    // The link is planned: both sides agree, so that is the base of the three-way merge.
    assert!(app.deadline_tick(false).await.report.ok());
    let google = app.cycle.google.as_ref().unwrap();
    let pass = |at: DateTime<Utc>| refresh_pass(&app.store, google, &google.refresh, at);
    let mut at = Utc::now() + chrono::Duration::seconds(61);
    for _ in 0..5 {
        pass(at).await.unwrap();
        at += chrono::Duration::seconds(interval_s(&env, &opp) + 1);
    }
    assert_eq!(interval_s(&env, &opp), 16 * 60);
    assert!(env
        .sim
        .edit_opportunity(&opp, |o| o["dealSize"] = 99999.0.into()));
    let p = pass(at).await.unwrap();
    assert_eq!(p.changed, 1, "{p:?}");
    assert_eq!(interval_s(&env, &opp), 60, "a change resets the interval");
    let queued: i64 = env.query("SELECT COUNT(*) FROM plan_queue", |r| r.get(0));
    assert_eq!(
        queued, 1,
        "the changed record queues its referral for planning"
    );
    // The deadline lane plans and pushes it: the new deal value reaches Partner Center.
    let cycle = app.deadline_tick(false).await;
    assert!(cycle.report.ok(), "{:?}", cycle.report.error);
    assert_eq!(
        env.sim.referral(&sample::referral_id(0)).unwrap()["details"]["dealValue"],
        99999.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_refresh_budget_caps_reads_per_hour_and_per_five_minutes() {
    let env = TestEnv::with_google("").await;
    set_refresh(&env, "min_interval = \"0s\"\nreads_per_hour = 24");
    tracked(&env, 10).await;
    let app = worker(&env);
    let google = app.cycle.google.as_ref().unwrap();
    // Two hours on, so the sync's own reads are out of the window.
    let t0 = Utc::now() + chrono::Duration::hours(2);
    let mut reads = 0;
    // Every 30 s for an hour, passes until the budget says no.
    for step in 0..120 {
        let at = t0 + chrono::Duration::seconds(30 * step);
        loop {
            let p = refresh_pass(&app.store, google, &google.refresh, at)
                .await
                .unwrap();
            reads += p.read;
            if p.budget_exhausted || p.read == 0 {
                break;
            }
        }
    }
    assert_eq!(reads, 24, "exactly the hourly budget, spread over the hour");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_alerts_an_urgent_referral_before_a_throttled_refresh_finishes() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let port = crate::daemon::free_port();
    let env = TestEnv::with_google(&format!(
        "\n[[alerts.webhook]]\nurl = \"{}/hook\"\nformat = \"json\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        server.uri()
    ))
    .await;
    env.edit_config(|c| {
        c.replace(
            "[refresh]\nmin_interval = \"0s\"",
            "[refresh]\nmin_interval = \"0s\"\nconcurrency = 1",
        )
        .replace("[state]", "[schedule]\nsync = \"* * * * * *\"\n\n[state]")
    });
    tracked(&env, 20).await;
    // Each Google read takes 1 s: re-reading the 20 tracked leads one at a time takes 20 s,
    // ten times what the urgent referral's alert needs. (Nothing waits for the reads to
    // finish: SIGTERM stops the refresh lane at once.)
    env.sim.set_google_read_delay(Duration::from_secs(1));
    let reads_before = gets(&env);
    let log = env.dir.path().join("daemon.log");
    let mut child = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The urgent referral arrives while the refresh lane is inside a slow read.
    assert!(
        wait_until(Duration::from_secs(30), || gets(&env) > reads_before).await,
        "the refresh lane never read: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    env.sim.put_referrals([urgent_referral("urgent-2", 3)]);
    let server = &server;
    let alerted = wait_until_async(Duration::from_secs(20), || async move {
        let requests = server.received_requests().await.unwrap_or_default();
        requests
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .any(|b| b["referral_id"] == "urgent-2")
    })
    .await;
    let reads_when_alerted = gets(&env) - reads_before;
    // The alert and the lead create of a new page run side by side: the lead follows at once.
    let has_lead = wait_until(Duration::from_secs(10), || {
        env.sim.leads_per_external_id().get("urgent-2") == Some(&1)
    })
    .await;
    let reads_when_linked = gets(&env) - reads_before;
    // The metrics show each lane and the refresh backlog.
    let metrics = cosell_sync::http::client_builder()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // `status` shows the refresh lane's backlog while it works.
    let status = crate::helpers::stdout(&env.cli(&["status"]).await);
    // SIGTERM stops both lanes, the slow refresh included, well within shutdown_grace (30 s).
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(25), child.wait()).await;
    if exited.is_err() {
        let _ = child.start_kill();
    }
    assert!(alerted, "{}", std::fs::read_to_string(&log).unwrap());
    assert!(has_lead, "no lead for the urgent referral");
    assert!(
        reads_when_alerted < 20 && reads_when_linked < 20,
        "alerted after {reads_when_alerted} and linked after {reads_when_linked} of the refresh lane's 20 reads"
    );
    assert!(
        status.contains("Refresh lane: 21 Google records tracked"),
        "{status}"
    );
    let backlog = metrics
        .lines()
        .find(|l| l.starts_with("cosell_refresh_backlog_records "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(backlog.is_some_and(|b| b >= 1.0), "{metrics}");
    assert!(metrics.contains("lane=\"deadline\""), "{metrics}");
    let exited = exited.expect("stopped within the grace period").unwrap();
    assert!(exited.success(), "{exited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_stage_on_an_opportunity_in_play_reaches_partner_center_at_its_next_check() {
    let env = TestEnv::with_google("").await;
    set_refresh(
        &env,
        "min_interval = \"1m\"\nhot_max_interval = \"4m\"\nmax_interval = \"6h\"",
    );
    tracked(&env, 1).await;
    let referral = sample::referral_id(0);
    let lead = env.sim.google_leads()[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let opp = env.sim.convert_lead(&lead, 41).unwrap();
    let out = env.cli(&["link", &referral, &opp]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let app = worker(&env);
    assert!(app.deadline_tick(false).await.report.ok());
    let google = app.cycle.google.as_ref().unwrap();
    let pass = |at: DateTime<Utc>| refresh_pass(&app.store, google, &google.refresh, at);
    // Quiet for hours: an opportunity in play is still read at least every 4 minutes.
    let mut at = Utc::now() + chrono::Duration::seconds(61);
    for _ in 0..8 {
        pass(at).await.unwrap();
        assert!(interval_s(&env, &opp) <= 240, "hot cap");
        at += chrono::Duration::seconds(interval_s(&env, &opp) + 1);
    }
    assert_eq!(interval_s(&env, &opp), 240);
    assert!(env
        .sim
        .edit_opportunity(&opp, |o| o["salesStage"] = "SALES_STAGE_CLOSED_LOST".into()));
    // Before its next check nothing is read; at it, the change is seen.
    let early = pass(at - chrono::Duration::seconds(120)).await.unwrap();
    assert_eq!(early.read, 0);
    let due = pass(at).await.unwrap();
    assert_eq!(due.read, 1, "{due:?}");
    assert!(app.deadline_tick(false).await.report.ok());
    let r = env.sim.referral(&referral).unwrap();
    assert_eq!(r["status"], "Closed");
    assert_eq!(r["substatus"], "Lost");
    // A final-stage opportunity is never read again.
    let later = pass(at + chrono::Duration::hours(12)).await.unwrap();
    assert_eq!(later.read, 0, "{later:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_to_known_referrals_come_in_the_background_and_are_planned_by_the_next_tick() {
    let env = TestEnv::with_google("").await;
    tracked(&env, 5).await;
    let app = worker(&env);
    assert!(app.deadline_tick(false).await.report.ok());
    let declined = sample::referral_id(3);
    assert!(env.sim.edit_referral(&declined, |r| {
        r["status"] = "Closed".into();
        r["substatus"] = "Declined".into();
        cosell_sync::sim::microsoft::touch(r);
    }));
    // A deadline tick reads only the inbox: the decline is not among its pages.
    assert!(app.deadline_tick(false).await.report.ok());
    let status = |env: &TestEnv| -> String {
        env.query(
            &format!("SELECT status FROM referrals WHERE id = '{declined}'"),
            |r| r.get(0),
        )
    };
    assert_eq!(status(&env), "New");
    // The background read of changes brings it, and queues the referral for planning.
    let pulled = lanes::changes_once(&app.cycle).await.expect("changes read");
    assert_eq!(pulled.counts.changed, 1, "{pulled:?}");
    assert_eq!(status(&env), "Closed");
    let queued: i64 = env.query(
        &format!("SELECT COUNT(*) FROM plan_queue WHERE referral_id = '{declined}'"),
        |r| r.get(0),
    );
    assert_eq!(queued, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_shot_sync_reads_each_due_record_once_even_with_no_minimum_interval() {
    let env = TestEnv::with_google("").await;
    set_refresh(&env, "min_interval = \"0s\"\nreads_per_hour = 10000000");
    // More than one pass's batch (50), so the passes must not re-read what they just read.
    tracked(&env, 120).await;
    let app = worker(&env);
    let cycle = tokio::time::timeout(Duration::from_secs(60), app.sync_once())
        .await
        .expect("the one-shot sync ends");
    assert!(cycle.report.ok(), "{:?}", cycle.report.error);
    assert_eq!(
        cycle.report.google.fetched, 120,
        "each tracked lead read once"
    );
}
