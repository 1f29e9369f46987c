//! The AWS inbox at volume (issue 29): N pending invitations (1,000 by default) pulled by
//! `sync` under `[aws] requests_per_second` (10, AWS's read quota) and alerted, then a
//! no-change re-sync. The simulators run in this process; the daemon is the real binary.
//!
//!     cargo bench --bench aws_inbox              # 1,000 invitations at 10 reads a second
//!     cargo bench --bench aws_inbox -- 200       # another size
//!
//! Prints wall time, the reads by operation and per invitation, the read rate the daemon
//! kept, the alerts raised and when the first one was. FAILS (exit 1, naming each) when: the first sync needs more
//! than 1.02 reads per invitation (one list page per 100, one detail read each), the reads
//! ran faster than the quota on average, an invitation within the widest threshold (72 h) got
//! no `referral_expiring` alert, or the re-sync reads any invitation in full again.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use cosell_sync::sim::aws::{AwsSimulator, ACCESS_KEY_ID, SECRET_ACCESS_KEY};
use cosell_sync::sim::Simulator;
use serde_json::{json, Value};

const READS_PER_SECOND: f64 = 10.0;
const TARGET_READS_PER_INVITATION: f64 = 1.02;

fn bin() -> String {
    std::env::var("BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cosell-sync").to_string())
}

/// Invitation `i`: deadlines spread over 10 days, 1 h apart from 1 h on.
fn invitation(i: usize) -> Value {
    let now = Utc::now();
    let at = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let id = format!("engi-b{i:012}");
    json!({
        "Id": id, "Catalog": "AWS", "PayloadType": "OpportunityInvitation",
        "EngagementTitle": format!("Bench {i}"), "Status": "PENDING",
        "InvitationDate": at(now - chrono::Duration::days(5)),
        "ExpirationDate": at(now + chrono::Duration::hours(1 + (i % 240) as i64)),
        "SenderCompanyName": "Amazon Web Services", "SenderAwsAccountId": "123456789012",
        "Payload": {"OpportunityInvitation": {
            "Customer": {"CompanyName": format!("Customer {i}"), "CountryCode": "US"},
            "Project": {"Title": format!("Project {i}"),
                        "ExpectedCustomerSpend": [{"Amount": "1000", "CurrencyCode": "USD"}]}}}
    })
}

fn count(db: &std::path::Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn sync(config: &std::path::Path) -> (Duration, bool) {
    let started = Instant::now();
    let out = std::process::Command::new(bin())
        .arg("--config")
        .arg(config)
        .arg("sync")
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (started.elapsed(), out.status.success())
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sim = runtime.block_on(Simulator::start()).unwrap();
    let aws = runtime.block_on(AwsSimulator::start()).unwrap();
    aws.put_invitations((0..n).map(invitation));
    let db = dir.path().join("state.db");
    let config = dir.path().join("config.toml");
    let tables = format!(
        "[aws]\nendpoint = \"{}\"\naccess_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key = \"{SECRET_ACCESS_KEY}\"\nrequests_per_second = {READS_PER_SECOND}\n",
        aws.endpoint()
    );
    let text = common::daemon_config(&sim, &db, &dir.path().join("key.json"), 50, &tables);
    std::fs::write(&config, text).unwrap();

    let mut failures = Vec::new();
    let started_at = Utc::now();
    let (wall, ok) = sync(&config);
    let (lists, gets) = (
        aws.counter("ListEngagementInvitations"),
        aws.counter("GetEngagementInvitation"),
    );
    let reads = (lists + gets) as f64;
    let per = reads / n as f64;
    let rate = reads / wall.as_secs_f64();
    let stored = count(&db, "SELECT COUNT(*) FROM referrals WHERE source = 'aws'");
    let alerted = count(
        &db,
        "SELECT COUNT(DISTINCT referral_id) FROM alerts WHERE kind = 'referral_expiring' AND referral_id LIKE 'engi-%'",
    );
    let due = (0..n).filter(|i| (i % 240) < 72).count() as i64;
    // When the first invitation alert was raised, after the start of the sync: a page's new
    // invitations are alerted before the next page is read.
    let first_alert = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let at: String = conn
            .query_row(
                "SELECT MIN(created_at) FROM alerts WHERE referral_id LIKE 'engi-%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(&at).unwrap();
        (at.with_timezone(&Utc) - started_at).num_milliseconds() as f64 / 1e3
    };
    println!(
        "first sync, {n} invitations: {:.1} s wall, {lists} list + {gets} get = {per:.3} reads per invitation, {rate:.2} reads/s (quota {READS_PER_SECOND}), {stored} stored, {alerted} of {due} within 72 h alerted, the first {first_alert:.1} s after the start",
        wall.as_secs_f64()
    );
    if !ok || stored != n as i64 {
        failures.push(format!("first sync: ok {ok}, {stored} of {n} stored"));
    }
    if per > TARGET_READS_PER_INVITATION {
        failures.push(format!(
            "{per:.3} reads per invitation > {TARGET_READS_PER_INVITATION}"
        ));
    }
    if rate > READS_PER_SECOND * 1.05 {
        failures.push(format!("{rate:.2} reads/s > the quota {READS_PER_SECOND}"));
    }
    if alerted != due {
        failures.push(format!(
            "{alerted} of {due} invitations within 72 h alerted"
        ));
    }

    let (wall, ok) = sync(&config);
    let lists2 = aws.counter("ListEngagementInvitations") - lists;
    let gets2 = aws.counter("GetEngagementInvitation") - gets;
    println!(
        "no-change re-sync: {:.1} s wall, {lists2} list + {gets2} get ({:.3} reads per invitation)",
        wall.as_secs_f64(),
        (lists2 + gets2) as f64 / n as f64
    );
    if !ok || gets2 > 0 {
        failures.push(format!("re-sync: ok {ok}, {gets2} invitations read again"));
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("MISSED: {f}");
        }
        std::process::exit(1);
    }
}
