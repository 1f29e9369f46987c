//! The webhook receiver under a hostile client on the loopback (issue 17): the real
//! `cosell-sync run` with `[webhook]` and `[metrics]` against the simulator (which also hosts
//! the trusted certificate prefix).
//!
//! 1. Forged floods: `clients` connections send forged events for `seconds`, first all naming
//!    one missing certificate under the trusted prefix, then each naming its own (so each passes
//!    the cheap checks and asks for a fetch); meanwhile 12 genuine referral events arrive. Reported: forged requests/s, p50/p99 answer time,
//!    certificate fetches vs distinct URLs, genuine events turned into leads, peak RSS.
//! 2. Slow connections: `slow` connections send a request head at one byte per second; while
//!    they are open, 6 genuine events arrive and `/healthz` is asked every 250 ms. Reported:
//!    when the slow connections were dropped (max ≤ the 10 s header timeout), genuine events
//!    turned into leads, `/healthz` worst answer, the daemon's largest RSS during the phase.
//!
//! Run:
//!
//!     cargo bench --bench flood                  # 10 s, 64 clients, 1,000 slow connections
//!     cargo bench --bench flood -- 20 64 1000    # seconds, clients, slow connections
//!
//! Targets: genuine events all accepted and forwarded in both phases, slow connections
//! dropped within 30 s, RSS under 64 MiB with 1,000 slow connections, `/healthz` answering.

#[path = "common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cosell_sync::sim::{sample, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_cosell-sync");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A field of /proc/PID/status in MiB (VmRSS, VmHWM).
fn proc_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Target {
    sim: Simulator,
    public_url: String,
    healthz: String,
    pid: u32,
}

/// New referrals `first..first + n`, one every `every`; returns their ids.
async fn genuine_events(sim: &Simulator, first: usize, n: usize, every: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    for i in first..first + n {
        ids.push(sample::referral_id(i));
        sim.put_referrals([sample::referral(
            i,
            chrono::Utc::now(),
            chrono::Duration::hours(10),
            "New",
            "Pending",
        )]);
        tokio::time::sleep(every).await;
    }
    ids
}

async fn leads_made(sim: &Simulator, ids: &[String], within: Duration) -> usize {
    let until = Instant::now() + within;
    loop {
        let leads = sim.leads_per_external_id();
        let made = ids.iter().filter(|id| leads.contains_key(*id)).count();
        if made == ids.len() || Instant::now() > until {
            return made;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Forged events for `seconds`; each names its own certificate URL when `distinct`, else all
/// name one missing certificate (fetched once, then refused from the negative cache).
async fn forged_flood(t: &Target, seconds: u64, clients: usize, distinct: bool) {
    let prefix = t.sim.webhook_certificate_prefix();
    let body = r#"{"EventName":"referral-created","ResourceUri":"https://x/engagements/v1/referrals/forged"}"#;
    let signature = cosell_sync::sim::webhook::sign(body.as_bytes());
    let fetches_before = t.sim.counter("webhook:certificate");
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (client, url, prefix, sig) = (
            cosell_sync::http::client_builder().build().unwrap(),
            t.public_url.clone(),
            prefix.clone(),
            signature.clone(),
        );
        let (latencies, sent) = (latencies.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < until {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let answer = client
                    .post(&url)
                    .header("authorization", format!("Signature {sig}"))
                    .header("x-ms-signature-algorithm", "rsa-sha256")
                    .header(
                        "x-ms-certificate-url",
                        if distinct {
                            format!("{prefix}forged-{n}.cer")
                        } else {
                            format!("{prefix}forged.cer")
                        },
                    )
                    .body(body)
                    .send()
                    .await;
                if matches!(&answer, Ok(a) if a.status() == 401) {
                    mine.push(started.elapsed());
                }
            }
            latencies.lock().unwrap().extend(mine);
        }));
    }
    let first = if distinct { 2_000_000 } else { 2_500_000 };
    let ids = genuine_events(
        &t.sim,
        first,
        12,
        Duration::from_millis(seconds * 1000 / 14),
    )
    .await;
    for w in workers {
        w.await.unwrap();
    }
    let made = leads_made(&t.sim, &ids, Duration::from_secs(20)).await;
    let mut l = std::mem::take(&mut *latencies.lock().unwrap());
    l.sort();
    let fetches = t.sim.counter("webhook:certificate") - fetches_before;
    let urls = if distinct {
        "each request naming its own certificate URL"
    } else {
        "all naming one missing certificate URL"
    };
    println!("forged flood: {seconds} s, {clients} clients, {urls}");
    println!(
        "  {} refused (401), {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
        l.len(),
        l.len() as f64 / seconds as f64,
        ms(percentile(&l, 0.5)),
        ms(percentile(&l, 0.99))
    );
    println!(
        "  certificate fetches: {fetches} for {} distinct URLs (at most 8 in flight; the rest refused unfetched)",
        if distinct { sent.load(Ordering::Relaxed) } else { 1 }
    );
    println!(
        "  genuine events forwarded to a lead: {made} of {}",
        ids.len()
    );
    println!(
        "  daemon peak RSS so far: {:.1} MiB",
        proc_mib(t.pid, "VmHWM:")
    );
}

/// One slow connection: a head at one byte per second until the daemon closes it. Returns
/// how long it stayed open (None: still open when `stop` was set).
async fn slow_connection(addr: String, stop: Arc<AtomicBool>) -> Option<Duration> {
    let opened = Instant::now();
    let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
    let head = b"POST /partner-center/events HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut buf = [0u8; 256];
    for byte in head.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if s.write_all(&[*byte]).await.is_err() {
            return Some(opened.elapsed());
        }
        // A closed connection reads as EOF at once; an open one times out after a second.
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
            _ => {}
        }
    }
    None
}

async fn slow_connections(t: &Target, slow: usize) {
    let addr = t
        .public_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns = Vec::new();
    for _ in 0..slow {
        conns.push(tokio::spawn(slow_connection(addr.clone(), stop.clone())));
    }
    let pid = t.pid;
    let sampling = Arc::new(AtomicBool::new(true));
    let rss = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut most: f64 = 0.0;
            while sampling.load(Ordering::Relaxed) {
                most = most.max(proc_mib(pid, "VmRSS:"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            most
        })
    };
    let health = {
        let url = t.healthz.clone();
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let client = cosell_sync::http::client_builder().build().unwrap();
            let (mut worst, mut failed, mut asked) = (Duration::ZERO, 0, 0);
            while sampling.load(Ordering::Relaxed) {
                let started = Instant::now();
                asked += 1;
                match client
                    .get(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => worst = worst.max(started.elapsed()),
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (worst, failed, asked)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ids = genuine_events(&t.sim, 3_000_000, 6, Duration::from_millis(500)).await;
    let made = leads_made(&t.sim, &ids, Duration::from_secs(20)).await;
    let mut open_for = Vec::new();
    let give_up = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(45)).await;
            stop.store(true, Ordering::Relaxed);
        }
    });
    let mut never_dropped = 0;
    for c in conns {
        match c.await.unwrap() {
            Some(d) => open_for.push(d),
            None => never_dropped += 1,
        }
    }
    give_up.abort();
    sampling.store(false, Ordering::Relaxed);
    let most_rss = rss.await.unwrap();
    let (worst, failed, asked) = health.await.unwrap();
    open_for.sort();
    println!("{slow} slow connections (a request head at 1 byte/s):");
    println!(
        "  dropped by the daemon: {} (after p50 {:.1} s, max {:.1} s); still open after 45 s: {never_dropped}",
        open_for.len(),
        percentile(&open_for, 0.5).as_secs_f64(),
        open_for.last().copied().unwrap_or_default().as_secs_f64()
    );
    println!(
        "  genuine events forwarded to a lead meanwhile: {made} of {}",
        ids.len()
    );
    println!(
        "  /healthz: {} of {asked} answered, worst {:.1} ms",
        asked - failed,
        ms(worst)
    );
    println!("  daemon RSS during the phase: at most {most_rss:.1} MiB");
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let seconds = args.first().copied().unwrap_or(10) as u64;
    let clients = args.get(1).copied().unwrap_or(64);
    let slow = args.get(2).copied().unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let sim = runtime.block_on(Simulator::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("sim-ca.pem");
    std::fs::write(&ca, sim.webhook_ca_pem()).unwrap();
    let (port, metrics) = (free_port(), free_port());
    let public_url = format!("http://127.0.0.1:{port}/partner-center/events");
    let config = dir.path().join("config.toml");
    let tables = format!(
        r#"
[schedule]
sync = "0 0 0 1 1 *"
[metrics]
listen = "127.0.0.1:{metrics}"
[webhook]
listen = "127.0.0.1:{port}"
public_url = "{public_url}"
certificate_url_prefixes = ["{prefix}"]
ca_file = "{ca}"
"#,
        prefix = sim.webhook_certificate_prefix(),
        ca = ca.display(),
    );
    let key = dir.path().join("google-key.json");
    let text = common::daemon_config(&sim, &dir.path().join("state.db"), &key, 1000, &tables);
    std::fs::write(&config, text).unwrap();
    let mut daemon = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "receiver did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    sim.register_webhook(&public_url);
    let target = Target {
        sim,
        public_url,
        healthz: format!("http://127.0.0.1:{metrics}/healthz"),
        pid: daemon.id(),
    };
    println!(
        "daemon RSS at start: {:.1} MiB",
        proc_mib(target.pid, "VmRSS:")
    );
    runtime.block_on(forged_flood(&target, seconds, clients, false));
    runtime.block_on(forged_flood(&target, seconds, clients, true));
    runtime.block_on(slow_connections(&target, slow));
    let _ = daemon.kill();
    let _ = daemon.wait();
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    println!(
        "  daemon log: {} lines, {} bytes; \"database is locked\": {}",
        log.lines().count(),
        log.len(),
        log.matches("database is locked").count()
    );
}
