//! Initial sync and no-change re-sync of the `cosell-sync` binary against the simulator, at
//! several inbox sizes. The simulator runs in this process; the daemon is the real binary in
//! a child process, so its CPU time and peak RSS (from wait4) are its own.
//!
//!     cargo bench --bench sync                     # 1k and 10k referrals
//!     cargo bench --bench sync -- 1000 10000 100000
//!     BENCH_LATENCY_MS=20 cargo bench --bench sync -- 1000   # simulated API latency
//!
//! Prints, per run: wall time, daemon CPU per referral, peak RSS, HTTP requests by kind and
//! requests per referral. Targets (issue 3): list pages = ceil(N/100) (+1 empty incremental
//! page), one create and one write-back per new referral, zero writes on the re-sync, peak
//! RSS at 100k ≤ 1.5× at 10k, CPU per referral flat.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cosell_sync::sim::{sample, Faults, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_cosell-sync");

struct Run {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: i64,
    requests: BTreeMap<String, u64>,
    ok: bool,
}

fn run_daemon(config: &std::path::Path) -> Run {
    let started = Instant::now();
    // BENCH_WRAP="valgrind --tool=massif" runs the daemon under a profiler.
    let wrap: Vec<String> = std::env::var("BENCH_WRAP")
        .map(|w| w.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let mut command = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = std::process::Command::new(program);
            c.args(args).arg(BIN);
            c
        }
        None => std::process::Command::new(BIN),
    };
    // Reaped with wait4 below (std's wait would not give the child's rusage).
    #[allow(clippy::zombie_processes)]
    let child = command
        .arg("--config")
        .arg(config)
        .arg("sync")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("daemon starts");
    // Peak RSS comes from the daemon's own VmHWM: wait4's ru_maxrss would include the
    // hiwater mark of this (simulator-holding) process, inherited across fork and exec.
    let pid = child.id();
    let hwm = std::thread::spawn(move || {
        let mut peak_kib = 0i64;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<i64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
            if status.contains("State:\tZ") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak_kib
    });
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child with valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(pid > 0, "wait4 failed");
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Run {
        wall: started.elapsed(),
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: hwm.join().unwrap_or(0),
        requests: BTreeMap::new(),
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    }
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000]
    } else {
        sizes
    };
    let latency = Duration::from_millis(
        std::env::var("BENCH_LATENCY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "cosell-sync benchmark: simulated latency {} ms per API request",
        latency.as_millis()
    );
    println!(
        "{:>7} {:<8} {:>8} {:>10} {:>9} {:>9} {:>7}  requests by kind",
        "N", "run", "wall s", "cpu us/ref", "peak MiB", "req/ref", "writes"
    );
    for n in sizes {
        let sim = runtime.block_on(Simulator::start()).unwrap();
        sim.put_referrals(sample::pending_inbox(n, chrono::Utc::now()));
        sim.set_faults(Faults {
            delay: latency,
            ..Faults::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("google-key.json");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            common::daemon_config(
                &sim,
                &dir.path().join("state.db"),
                &key,
                100000,
                r#"
[sync]
concurrency = 8
"#,
            ),
        )
        .unwrap();
        for label in ["initial", "re-sync"] {
            let before = sim.counters();
            let mut run = runtime.block_on(async {
                let config = config.clone();
                tokio::task::spawn_blocking(move || run_daemon(&config))
                    .await
                    .unwrap()
            });
            run.requests = diff(&sim.counters(), &before);
            let total: u64 = run
                .requests
                .iter()
                .filter(|(k, _)| !k.contains("token"))
                .map(|(_, v)| v)
                .sum();
            let writes = ["patch", "google.create_lead", "google.patch_opportunity"]
                .iter()
                .map(|k| run.requests.get(*k).copied().unwrap_or(0))
                .sum::<u64>();
            println!(
                "{:>7} {:<8} {:>8.2} {:>10.1} {:>9.1} {:>9.3} {:>7}  {:?}{}",
                n,
                label,
                run.wall.as_secs_f64(),
                run.cpu.as_secs_f64() * 1e6 / n as f64,
                run.max_rss_kib as f64 / 1024.0,
                total as f64 / n as f64,
                writes,
                run.requests,
                if run.ok { "" } else { "  (the sync FAILED)" }
            );
        }
        let duplicates = sim
            .leads_per_external_id()
            .values()
            .filter(|v| **v > 1)
            .count();
        println!(
            "{:>7} leads in Google: {}, referrals with more than one lead: {duplicates}",
            n,
            sim.google_leads().len()
        );
    }
}
