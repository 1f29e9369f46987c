//! Finding 1 of issue 9: random SIGKILLs and SIGTERMs (past `shutdown_grace`) while lead
//! creates are slow. Only a create that may be on the wire is ever in doubt: at most
//! `concurrency` creates per kill end quarantined, and every quarantined one really reached
//! the server (the simulator's own record of the creates it received), but for the few a kill
//! catches between the claim's commit and the request's write.

use std::collections::BTreeSet;
use std::time::Duration;

use cosell_sync::sim::sample;

use crate::helpers::{stderr, TestEnv, BIN};

const CONCURRENCY: usize = 4;

/// `run` with this config, its output discarded.
pub(crate) fn spawn_run(env: &TestEnv) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn in_flight_creates(env: &TestEnv) -> Vec<String> {
    let conn = rusqlite::Connection::open(env.state_db()).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT referral_id FROM outbox WHERE kind = 'create_lead' AND state = 'in_flight'",
        )
        .unwrap();
    let ids = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    ids
}

/// Runs `rounds` random kills and checks the bound after each; returns (kills, quarantined).
async fn kill_rounds(rounds: usize) -> (usize, usize) {
    let env = TestEnv::with_google(&format!(
        "concurrency = {CONCURRENCY}\n\n[daemon]\nshutdown_grace = \"50ms\"\nsync_on_start = true\n"
    ))
    .await;
    let referrals = sample::pending_inbox(16 * rounds + 40, chrono::Utc::now());
    env.sim.put_referrals(referrals.clone());
    // Creates stay on the wire long enough for a kill to land mid-create most times; the
    // kill comes within a few create latencies (below) of this process's first create.
    env.sim.set_create_latency(Duration::from_millis(150));
    let mut expected_quarantine: BTreeSet<String> = BTreeSet::new();
    let mut unsent_in_doubt = 0;
    for round in 0..rounds {
        let before = env.sim.create_requests().len();
        let mut child = spawn_run(&env);
        // Kill while creates are under way: wait for this process's first create, then a
        // random part of a few create latencies.
        let started = std::time::Instant::now();
        while env.sim.create_requests().len() == before
            && started.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            env.sim.create_requests().len() > before,
            "round {round}: no create started within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..500))).await;
        let pid = child.id().unwrap().to_string();
        let signal = if round % 2 == 0 { "-KILL" } else { "-TERM" };
        std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("the daemon exits after the signal")
            .unwrap();
        let doubtful = in_flight_creates(&env);
        assert!(
            doubtful.len() <= CONCURRENCY,
            "round {round} ({signal}): {} creates left in doubt, more than concurrency {CONCURRENCY}: {doubtful:?}",
            doubtful.len()
        );
        // A request the dead process sent may still be on its way through the server's
        // accept and read: give it a moment to arrive.
        let mut received: BTreeSet<String> = BTreeSet::new();
        for _ in 0..100 {
            received = env.sim.create_requests().into_iter().collect();
            if doubtful.iter().all(|id| received.contains(id)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The claim commits `in_flight` before the request is written (it must come first),
        // and a new connection's connect comes between the two: a SIGKILL can land there,
        // mostly on a loaded machine. Counted here, bounded below for the whole run.
        let unsent: Vec<&String> = doubtful
            .iter()
            .filter(|id| !received.contains(*id))
            .collect();
        if !unsent.is_empty() {
            eprintln!(
                "round {round} ({signal}): in doubt but never reached the server: {unsent:?}"
            );
        }
        unsent_in_doubt += unsent.len();
        expected_quarantine.extend(doubtful);
    }
    // A clean cycle recovers: the doubtful creates are quarantined, nothing else is.
    let out = env.cli(&["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let conn = rusqlite::Connection::open(env.state_db()).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT referral_id FROM outbox WHERE kind = 'create_lead' AND state = 'quarantined'",
        )
        .unwrap();
    let quarantined: BTreeSet<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(quarantined, expected_quarantine);
    let duplicates: Vec<_> = env
        .sim
        .leads_per_external_id()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(duplicates.is_empty(), "duplicate leads: {duplicates:?}");
    let received = env.sim.create_requests();
    let unique: BTreeSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "a create was sent twice");
    // A claim made early (before the rate limiter or the slot, say) would leave most of the
    // quarantined creates unsent.
    assert!(
        unsent_in_doubt * 2 <= quarantined.len(),
        "{unsent_in_doubt} of {} quarantined creates never reached the server",
        quarantined.len()
    );
    assert!(
        quarantined.len() >= rounds / 4,
        "the kills should land mid-create: only {} quarantined in {rounds} kills",
        quarantined.len()
    );
    (rounds, quarantined.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn random_kills_leave_at_most_concurrency_creates_in_doubt_and_only_sent_ones() {
    let (kills, quarantined) = kill_rounds(6).await;
    eprintln!("{kills} kills, {quarantined} creates quarantined");
}

/// The long run of the report: `cargo test --test it many_random_kills -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a long run (100 kills, a few minutes); run by hand"]
async fn many_random_kills() {
    let (kills, quarantined) = kill_rounds(100).await;
    eprintln!("{kills} kills, {quarantined} creates quarantined");
}
