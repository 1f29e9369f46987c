//! Urgent-referral latency of the daemon (`run`, the release binary) against the simulator,
//! with N Google leads already tracked and both APIs capped at 10 requests/s, a 5 s schedule:
//! how long from "Microsoft has a new referral 3 h from its deadline" to "its expiry alert
//! reached a webhook" and to "its Google lead exists", over many trials; then an idle window
//! that counts Google reads (the refresh budget) and writes (none expected). Both are also
//! printed from the start of the tick that served the referral (its `cycle_runs` row): the
//! wait for the schedule is uniform over 0–5 s and hides a change of a few milliseconds.
//!
//!     cargo bench --bench latency -- 1000 10000 100000
//!     BENCH_TRIALS=20 BENCH_IDLE_SECS=300 BENCH_ALL_PENDING=1 cargo bench --bench latency -- 10000
//!
//! The tracked referrals have been accepted in Partner Center (they left the inbox), as they
//! are in practice once their lead exists; `BENCH_ALL_PENDING=1` keeps them all Pending
//! instead, so every tick reads the whole inbox (N/100 pages at 10 requests/s).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
#[path = "common/mod.rs"]
mod common;

use cosell_sync::sim::{sample, Simulator};
use serde_json::Value;

/// The daemon under test: this package's binary, or `BENCH_BIN` (another build, to
/// alternate two builds in the same hour).
fn bin() -> String {
    std::env::var("BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cosell-sync").to_string())
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(dir: &std::path::Path, sim: &Simulator, rps: u32, hook: &str, extra: &str) -> String {
    let tables = format!(
        r#"
[schedule]
sync = "*/5 * * * * *"
[sync]
concurrency = 8
[[alerts.webhook]]
url = "{hook}"
format = "json"
{extra}
"#
    );
    common::daemon_config(
        sim,
        &dir.join("state.db"),
        &dir.join("google-key.json"),
        rps,
        &tables,
    )
}

fn sync_once(config: &std::path::Path) {
    let status = std::process::Command::new(bin())
        .arg("--config")
        .arg(config)
        .arg("sync")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "seeding sync failed");
}

fn urgent(id: &str) -> Value {
    let now = chrono::Utc::now();
    let mut r = sample::pending_inbox(1, now).remove(0);
    r["id"] = id.into();
    r["createdDateTime"] = (now - chrono::Duration::days(14) + chrono::Duration::hours(3))
        .to_rfc3339()
        .into();
    r["updatedDateTime"] = now.to_rfc3339().into();
    r
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn first_tick_done(db: &std::path::Path) -> bool {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return false;
    };
    conn.query_row(
        "SELECT COUNT(*) FROM cycle_runs WHERE outcome = 'ok'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n >= 1)
    .unwrap_or(false)
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() { vec![1_000] } else { sizes };
    let trials = env_num("BENCH_TRIALS", 20) as usize;
    let idle_secs = env_num("BENCH_IDLE_SECS", 120);
    let all_pending = env_num("BENCH_ALL_PENDING", 0) == 1;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "urgent-referral latency: 10 requests/s per API, schedule */5 s, {trials} trials, tracked referrals {}",
        if all_pending { "all still Pending" } else { "accepted (out of the inbox)" }
    );
    for n in sizes {
        let sim = runtime.block_on(Simulator::start()).unwrap();
        let arrivals: Arrivals = Arc::default();
        let hook = {
            let arrivals = arrivals.clone();
            let app = Router::new().route(
                "/hook",
                post(move |Json(alert): Json<Value>| {
                    let arrivals = arrivals.clone();
                    async move {
                        if let Some(id) = alert["referral_id"].as_str() {
                            arrivals
                                .lock()
                                .unwrap()
                                .entry(id.to_string())
                                .or_insert_with(Instant::now);
                        }
                        "ok"
                    }
                }),
            );
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let addr = listener.local_addr().unwrap();
            runtime.spawn(async move { axum::serve(listener, app).await });
            format!("http://{addr}/hook")
        };
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");

        // Seed: N referrals forwarded at full speed, then (by default) accepted in Partner Center.
        let seeding = Instant::now();
        sim.put_referrals(sample::pending_inbox(n, chrono::Utc::now()));
        std::fs::write(&cfg, config(dir.path(), &sim, 100_000, &hook, "")).unwrap();
        sync_once(&cfg);
        if !all_pending {
            for i in 0..n {
                sim.edit_referral(&sample::referral_id(i), |r| {
                    r["status"] = "Active".into();
                    r["substatus"] = "Accepted".into();
                    cosell_sync::sim::microsoft::touch(r);
                });
            }
            sync_once(&cfg);
        }
        arrivals.lock().unwrap().clear();
        let tracked = sim.google_leads().len();
        println!(
            "{n:>7} tracked: {tracked} leads (seeded in {:.0} s)",
            seeding.elapsed().as_secs_f64()
        );

        // The daemon at 10 requests/s per API.
        std::fs::write(&cfg, config(dir.path(), &sim, 10, &hook, "")).unwrap();
        let mut child = std::process::Command::new(bin())
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        let pid = child.id();
        let db = dir.path().join("state.db");
        let started = Instant::now();
        while !first_tick_done(&db) && started.elapsed() < Duration::from_secs(600) {
            std::thread::sleep(Duration::from_millis(200));
        }
        // Let the start-up tick (a full plan) finish before the trials.
        std::thread::sleep(Duration::from_secs(6));

        let before = sim.counters();
        let (mut alert_lat, mut lead_lat) = (Vec::new(), Vec::new());
        // When each referral was put, on the clock the daemon stamps its cycles with.
        let mut put_at = Vec::new();
        let trials_started = Instant::now();
        for t in 0..trials {
            let id = format!("bench-urgent-{t}");
            let put = Instant::now();
            let put_wall = chrono::Utc::now();
            sim.put_referrals([urgent(&id)]);
            let mut lead_at = None;
            while put.elapsed() < Duration::from_secs(180) {
                if lead_at.is_none() && sim.leads_per_external_id().contains_key(&id) {
                    lead_at = Some(put.elapsed());
                }
                let alert_at = arrivals.lock().unwrap().get(&id).map(|at| *at - put);
                if let (Some(lead), Some(alert)) = (lead_at, alert_at) {
                    lead_lat.push(lead);
                    alert_lat.push(alert);
                    put_at.push((put_wall, alert, lead));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // A random phase against the 5 s schedule for the next trial.
            std::thread::sleep(Duration::from_millis(fastrand::u64(500..5500)));
        }
        let during = cosell_sync_diff(&sim.counters(), &before);
        let trials_secs = trials_started.elapsed().as_secs_f64();
        let (from_tick_alert, from_tick_lead) = from_tick_start(&db, &put_at);
        alert_lat.sort();
        lead_lat.sort();
        if alert_lat.len() < trials {
            println!(
                "{n:>7} only {} of {trials} trials completed within 180 s",
                alert_lat.len()
            );
        }
        if !alert_lat.is_empty() {
            println!(
                "{n:>7} alert delivered: p50 {:.2} s, max {:.2} s | lead created: p50 {:.2} s, max {:.2} s ({} trials)",
                percentile(&alert_lat, 0.5).as_secs_f64(),
                alert_lat.last().unwrap().as_secs_f64(),
                percentile(&lead_lat, 0.5).as_secs_f64(),
                lead_lat.last().unwrap().as_secs_f64(),
                alert_lat.len()
            );
        }
        if !from_tick_alert.is_empty() {
            // The part the daemon controls: the 5 s schedule's phase taken out.
            println!(
                "{n:>7} from the serving tick's start: alert p50 {:.0} ms, max {:.0} ms | lead p50 {:.0} ms, max {:.0} ms",
                percentile(&from_tick_alert, 0.5).as_secs_f64() * 1000.0,
                from_tick_alert.last().unwrap().as_secs_f64() * 1000.0,
                percentile(&from_tick_lead, 0.5).as_secs_f64() * 1000.0,
                from_tick_lead.last().unwrap().as_secs_f64() * 1000.0,
            );
        }
        println!("{n:>7} requests during the trials ({trials_secs:.0} s): {during:?}");

        // Idle: nothing new arrives.
        let before = sim.counters();
        std::thread::sleep(Duration::from_secs(idle_secs));
        let idle = cosell_sync_diff(&sim.counters(), &before);
        let reads = idle.get("google.get_lead").copied().unwrap_or(0)
            + idle.get("google.get_opportunity").copied().unwrap_or(0);
        let writes = ["patch", "google.create_lead", "google.patch_opportunity"]
            .iter()
            .map(|k| idle.get(*k).copied().unwrap_or(0))
            .sum::<u64>();
        println!(
            "{n:>7} idle {idle_secs} s: {reads} Google reads (budget 3600/h, at most 300 per 5 min), {writes} writes; all: {idle:?}"
        );
        let peak = vm_hwm_kib(pid).unwrap_or(0);
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = child.wait();
        let duplicates = sim
            .leads_per_external_id()
            .values()
            .filter(|v| **v > 1)
            .count();
        println!(
            "{n:>7} daemon peak RSS {:.1} MiB; referrals with more than one lead: {duplicates}",
            peak as f64 / 1024.0
        );
    }
}

/// Each trial's alert and lead measured from the start of the tick that served it (the last
/// cycle started before the alert arrived, from `cycle_runs`), sorted: the latency without
/// the wait for the schedule, which is uniform over 0–5 s and hides a change of a few ms.
fn from_tick_start(
    db: &std::path::Path,
    trials: &[(chrono::DateTime<chrono::Utc>, Duration, Duration)],
) -> (Vec<Duration>, Vec<Duration>) {
    let Ok(conn) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return (Vec::new(), Vec::new());
    };
    let starts: Vec<chrono::DateTime<chrono::Utc>> = conn
        .prepare("SELECT started_at FROM cycle_runs ORDER BY started_at")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default()
        .iter()
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .collect();
    let (mut alerts, mut leads) = (Vec::new(), Vec::new());
    for (put, alert, lead) in trials {
        let alert_at = *put + chrono::Duration::from_std(*alert).unwrap_or_default();
        let lead_at = *put + chrono::Duration::from_std(*lead).unwrap_or_default();
        let Some(tick) = starts.iter().rev().find(|s| **s <= alert_at) else {
            continue;
        };
        alerts.push((alert_at - *tick).to_std().unwrap_or_default());
        leads.push((lead_at - *tick).to_std().unwrap_or_default());
    }
    alerts.sort();
    leads.sort();
    (alerts, leads)
}

fn cosell_sync_diff(
    after: &std::collections::BTreeMap<String, u64>,
    before: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}
