//! Does scraping `/metrics` slow the daemon's cycles? Runs the real binary (`run`, metrics on)
//! against the simulator with N pending referrals, once with no scraper and once with S
//! scrapers hammering `/metrics` back to back, and prints the first cycle's duration (the
//! daemon's own `cosell_cycle_duration_seconds_sum`) and how many scrapes were answered.
//!
//!     cargo bench --bench scrape                  # 10,000 referrals, 32 scrapers
//!     cargo bench --bench scrape -- 20000 64
//!     BENCH_BIN=/path/to/old/cosell-sync cargo bench --bench scrape   # another build
//!     BENCH_SCRAPE_PAUSE_MS=100 cargo bench --bench scrape   # each scraper pauses between scrapes
//!
//! Target (issue 9, finding 10): the cycle with 32 scrapers within 1.2x of the cycle without.

#[path = "common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cosell_sync::sim::{sample, Simulator};

fn bin() -> String {
    std::env::var("BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cosell-sync").to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One plain HTTP/1.0 GET; the body, or `None` when the daemon is not answering.
fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

fn sample_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// `BENCH_SCRAPE_PAUSE_MS`: each scraper's pause between scrapes (default 0: back to back).
fn scrape_pause() -> Duration {
    Duration::from_millis(
        std::env::var("BENCH_SCRAPE_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

struct Outcome {
    cycle_s: f64,
    scrapes: u64,
}

fn run(runtime: &tokio::runtime::Runtime, n: usize, scrapers: usize) -> Outcome {
    let sim = runtime.block_on(Simulator::start()).unwrap();
    sim.put_referrals(sample::pending_inbox(n, chrono::Utc::now()));
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("google-key.json");
    let port = free_port();
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
[sync]
concurrency = 8
[metrics]
listen = "127.0.0.1:{port}"
"#
            ),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(bin())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .spawn()
        .expect("daemon starts");
    let started = Instant::now();
    while get(port, "/healthz").is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
            panic!("no /healthz; the daemon's log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let pause = scrape_pause();
    let threads: Vec<_> = (0..scrapers)
        .map(|_| {
            let (stop, scrapes) = (stop.clone(), scrapes.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if get(port, "/metrics").is_some() {
                        scrapes.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(pause);
                }
            })
        })
        .collect();
    let cycle_s = loop {
        std::thread::sleep(Duration::from_millis(200));
        let metrics = get(port, "/metrics").unwrap_or_default();
        if sample_value(&metrics, "cosell_cycle_duration_seconds_count").unwrap_or(0.0) >= 1.0 {
            break sample_value(&metrics, "cosell_cycle_duration_seconds_sum").unwrap();
        }
        if started.elapsed() > Duration::from_secs(600) || child.try_wait().ok().flatten().is_some()
        {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
            panic!("no cycle ended; the daemon's log:\n{log}");
        }
    };
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    Outcome {
        cycle_s,
        scrapes: scrapes.load(Ordering::Relaxed),
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(10_000);
    let scrapers = args.get(1).copied().unwrap_or(32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "cosell-sync scrape benchmark: {n} pending referrals, binary {}",
        bin()
    );
    println!("{:>9} {:>10} {:>9}", "scrapers", "cycle s", "scrapes");
    let quiet = run(&runtime, n, 0);
    println!("{:>9} {:>10.2} {:>9}", 0, quiet.cycle_s, quiet.scrapes);
    let busy = run(&runtime, n, scrapers);
    println!("{:>9} {:>10.2} {:>9}", scrapers, busy.cycle_s, busy.scrapes);
    println!(
        "slowdown with {scrapers} scrapers: {:.2}x",
        busy.cycle_s / quiet.cycle_s
    );
}
