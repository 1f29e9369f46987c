//! Partner Center webhook latency (issue 12): the real `cosell-sync run` with `[webhook]`
//! against the simulator, after an initial sync has made 10,000 tracked leads. Then urgent
//! referrals (3 h left) are created one at a time; the simulator sends each one's signed event
//! at once. Measured per referral: event sent → Google lead created (seen by the simulator),
//! and event sent → its `referral_expiring` alert received by a JSON webhook sink.
//!
//!     cargo bench --bench webhook                 # 10,000 tracked leads, 50 events
//!     cargo bench --bench webhook -- 1000 20      # tracked leads, events
//!
//! Targets: lead p95 ≤ 2 s, alert ≤ 1 s. The schedule never fires during the run, so no
//! cycle helps: only the events do.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::Json;
use cosell_sync::sim::{sample, Simulator};
use serde_json::Value;

/// The daemon under test: this package's binary, or `BENCH_BIN` (another build, to
/// alternate two builds in the same hour).
fn bin() -> String {
    std::env::var("BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cosell-sync").to_string())
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn sink(State(arrivals): State<Arrivals>, Json(alert): Json<Value>) -> &'static str {
    if let Some(id) = alert["referral_id"].as_str() {
        arrivals
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert_with(Instant::now);
    }
    "ok"
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    if v.is_empty() {
        println!("{name}: no samples");
        return;
    }
    println!(
        "{name}: n={} p50={:.0} ms p95={:.0} ms max={:.0} ms",
        v.len(),
        percentile(&v, 0.5).as_secs_f64() * 1000.0,
        percentile(&v, 0.95).as_secs_f64() * 1000.0,
        v[v.len() - 1].as_secs_f64() * 1000.0
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let tracked = args.first().copied().unwrap_or(10_000);
    let events = args.get(1).copied().unwrap_or(50);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let sim = runtime.block_on(Simulator::start()).unwrap();
    let arrivals: Arrivals = Arc::default();
    let sink_addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", post(sink))
            .with_state(arrivals.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    });
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("google-key.json");
    let ca = dir.path().join("sim-ca.pem");
    std::fs::write(&ca, sim.webhook_ca_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public_url = format!("http://127.0.0.1:{port}/partner-center/events");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        common::daemon_config(
            &sim,
            &dir.path().join("state.db"),
            &key,
            100000,
            &format!(
                r#"
[schedule]
sync = "0 0 0 1 1 *"
[daemon]
sync_on_start = false
[sync]
concurrency = 8
[[alerts.webhook]]
url = "http://{sink_addr}/hook"
format = "json"
[webhook]
listen = "127.0.0.1:{port}"
public_url = "{public_url}"
certificate_url_prefixes = ["{prefix}"]
ca_file = "{ca}"
"#,
                prefix = sim.webhook_certificate_prefix(),
                ca = ca.display(),
            ),
        ),
    )
    .unwrap();

    // 10,000 tracked leads: one initial sync (no webhook registered yet, so no events).
    sim.put_referrals(sample::pending_inbox(tracked, chrono::Utc::now()));
    let started = Instant::now();
    let status = std::process::Command::new(bin())
        .arg("--config")
        .arg(&config)
        .arg("sync")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "initial sync failed");
    println!(
        "initial sync of {tracked} referrals: {:.1} s, {} leads tracked",
        started.elapsed().as_secs_f64(),
        sim.google_leads().len()
    );

    let mut daemon = std::process::Command::new(bin())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "receiver did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    sim.register_webhook(&public_url);

    let (mut to_lead, mut to_alert) = (Vec::new(), Vec::new());
    for n in 0..events {
        let i = 1_000_000 + n;
        let id = sample::referral_id(i);
        let age = chrono::Duration::days(14) - chrono::Duration::hours(3);
        let sent = Instant::now();
        sim.put_referrals([sample::referral(
            i,
            chrono::Utc::now(),
            age,
            "New",
            "Pending",
        )]);
        let limit = sent + Duration::from_secs(20);
        let mut lead_at = None;
        while Instant::now() < limit {
            if lead_at.is_none() && sim.leads_per_external_id().contains_key(&id) {
                lead_at = Some(Instant::now());
            }
            if lead_at.is_some() && arrivals.lock().unwrap().contains_key(&id) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(at) = lead_at {
            to_lead.push(at - sent);
        }
        if let Some(at) = arrivals.lock().unwrap().get(&id) {
            to_alert.push(*at - sent);
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    println!("{events} urgent referrals by webhook, {tracked} leads tracked:");
    summary("  event → Google lead created", to_lead);
    summary("  event → alert at the webhook sink", to_alert);
    let duplicates = sim
        .leads_per_external_id()
        .values()
        .filter(|n| **n > 1)
        .count();
    println!("  referrals with more than one lead: {duplicates}");
}
