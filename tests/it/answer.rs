//! `accept` and `decline` against the simulator: one PATCH with `If-Match`, audited with the
//! actor; exit 0 also when already so (no PATCH); exit 1 for each refusal with no PATCH; a 412
//! re-reads and decides again; `--dry-run` sends and changes nothing; a transient failure
//! leaves the answer queued; with a daemon running, the daemon sends it.

use chrono::Utc;
use cosell_sync::sim::{sample, Fault};
use serde_json::json;

use crate::helpers::{stderr, stdout, TestEnv};

/// A simulator with one incoming New referral (3 days old), synced into the database.
async fn synced(i: usize) -> (TestEnv, String) {
    let env = TestEnv::new().await;
    let now = Utc::now();
    env.sim.put_referrals([sample::referral(
        i,
        now,
        chrono::Duration::days(3),
        "New",
        "Pending",
    )]);
    assert!(env.run(&["sync"]).await.status.success());
    (env, sample::referral_id(i))
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_sends_one_patch_with_if_match_and_audits_who_asked() {
    let (env, id) = synced(1).await;
    let etag = env.sim.referral(&id).unwrap()["eTag"].clone();
    let out = env.run(&["accept", &id, "--note", "Ana takes it"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("accepted in Partner Center"),
        "{}",
        stdout(&out)
    );
    let patches = env.sim.applied_patches(&id);
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].if_match.as_deref(), etag.as_str());
    assert_eq!(
        patches[0].body,
        json!([{"op":"replace","path":"/status","value":"Active"},{"op":"replace","path":"/substatus","value":"Accepted"}])
    );
    let now = env.sim.referral(&id).unwrap();
    assert_eq!(
        (now["status"].as_str(), now["substatus"].as_str()),
        (Some("Active"), Some("Accepted"))
    );
    let audit = stdout(&env.run(&["audit", "--referral", &id]).await);
    assert!(audit.contains("by: cli"), "{audit}");
    assert!(audit.contains("note: Ana takes it"), "{audit}");

    // Again: already so, exit 0, no second PATCH.
    let again = env.run(&["accept", &id]).await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already accepted"),
        "{}",
        stdout(&again)
    );
    assert_eq!(
        env.sim.patches().len(),
        1,
        "no request at all for an answer already there"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn decline_needs_a_reason_and_sends_it_as_status_reason() {
    let (env, id) = synced(2).await;
    for args in [
        vec!["decline", id.as_str()],
        vec!["decline", id.as_str(), "--reason", ""],
        vec!["decline", id.as_str(), "--reason", "   "],
    ] {
        let out = env.run(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    assert!(env.sim.patches().is_empty());
    let out = env
        .run(&["decline", &id, "--reason", "No capacity this quarter"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let r = env.sim.referral(&id).unwrap();
    assert_eq!(r["status"], "Closed");
    assert_eq!(r["substatus"], "Declined");
    assert_eq!(r["statusReason"], "No capacity this quarter");
    let again = env.run(&["decline", &id, "--reason", "Other"]).await;
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("already declined"),
        "{}",
        stdout(&again)
    );
    // Answered the other way: exit 1, says how and when.
    let accept = env.run(&["accept", &id]).await;
    assert_eq!(accept.status.code(), Some(1));
    assert!(
        stderr(&accept).contains("answered the other way: declined on"),
        "{}",
        stderr(&accept)
    );
    assert!(
        stderr(&accept).contains("No capacity this quarter"),
        "{}",
        stderr(&accept)
    );
    assert_eq!(env.sim.applied_patches(&id).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_exits_1_and_writes_nothing() {
    let env = TestEnv::new().await;
    let now = Utc::now();
    let mut outgoing = sample::referral(10, now, chrono::Duration::days(1), "New", "Pending");
    outgoing["direction"] = json!("Outgoing");
    let won = sample::referral(11, now, chrono::Duration::days(2), "Closed", "Won");
    let expired = sample::referral(12, now, chrono::Duration::days(15), "New", "Pending");
    let archived = sample::referral(13, now, chrono::Duration::days(16), "Closed", "Expired");
    env.sim.put_referrals([outgoing, won, expired, archived]);
    let cases = [
        (sample::referral_id(10), "not an incoming referral"),
        (sample::referral_id(11), "already Closed (Won)"),
        (sample::referral_id(12), "past its deadline"),
        (sample::referral_id(13), "Closed/Expired"),
        ("no-such-referral".to_string(), "unknown to Partner Center"),
    ];
    for (id, why) in &cases {
        for args in [
            vec!["accept", id.as_str()],
            vec!["decline", id.as_str(), "--reason", "x"],
        ] {
            let out = env.run(&args).await;
            assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
            assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
        }
    }
    assert!(
        env.sim.patches().is_empty(),
        "no PATCH for any refusal: {:?}",
        env.sim.patches()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_etag_re_reads_and_decides_again() {
    // Edited in the portal since the last sync: 412, re-read, sent with the new eTag.
    let (env, id) = synced(20).await;
    env.sim.edit_referral(&id, |r| {
        r["details"]["notes"] = json!("edited in the portal")
    });
    let out = env.run(&["accept", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let statuses: Vec<u16> = env.sim.patches().iter().map(|p| p.status).collect();
    assert_eq!(statuses, vec![412, 200]);

    // Answered in the portal first: 412, re-read, nothing more to write (or refused).
    let (env, id) = synced(21).await;
    env.sim.edit_referral(&id, |r| {
        r["status"] = json!("Active");
        r["substatus"] = json!("Accepted");
    });
    let out = env.run(&["accept", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("already accepted"),
        "{}",
        stdout(&out)
    );
    let declined = env.run(&["decline", &id, "--reason", "x"]).await;
    assert_eq!(declined.status.code(), Some(1));
    let statuses: Vec<u16> = env.sim.patches().iter().map(|p| p.status).collect();
    assert_eq!(
        statuses,
        vec![412],
        "exactly one (refused) PATCH, never a blind retry"
    );
    assert_eq!(env.sim.referral(&id).unwrap()["substatus"], "Accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_patch_and_changes_nothing() {
    let (env, id) = synced(30).await;
    let before = std::fs::read(env.state_db()).unwrap();
    let out = env
        .run(&["decline", &id, "--reason", "Too small", "--dry-run"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("PATCH /v1.0/engagements/referrals/{id}")),
        "{text}"
    );
    assert!(text.contains("If-Match: \""), "{text}");
    assert!(text.contains("\"value\": \"Too small\""), "{text}");
    assert!(env.sim.patches().is_empty());
    let answers: i64 = env.query(
        "SELECT COUNT(*) FROM outbox WHERE kind = 'answer_referral'",
        |r| r.get(0),
    );
    assert_eq!(answers, 0);
    assert_eq!(
        std::fs::read(env.state_db()).unwrap(),
        before,
        "database untouched"
    );
    // The global form works too.
    let out = env.run(&["--dry-run", "accept", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.sim.patches().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_failure_leaves_the_answer_queued_and_says_so() {
    let (env, id) = synced(40).await;
    env.sim
        .script_faults(std::iter::repeat_n(Fault::Unavailable, 40));
    let out = env.run(&["accept", &id]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("not sent yet"), "{}", stderr(&out));
    let (state, kind): (String, String) = env.query(
        "SELECT state, kind FROM outbox WHERE referral_id = (SELECT id FROM referrals LIMIT 1) AND kind = 'answer_referral'",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(
        (state.as_str(), kind.as_str()),
        ("pending", "answer_referral")
    );
    assert_eq!(env.sim.referral(&id).unwrap()["status"], "New");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_daemon_running_the_daemon_sends_it_and_the_command_reports_it() {
    let (env, id) = synced(50).await;
    let mut daemon = crate::daemon::spawn_started(&env).await;
    let out = env
        .cli(&["decline", &id, "--reason", "Outside our region"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("declined in Partner Center"),
        "{}",
        stdout(&out)
    );
    assert_eq!(env.sim.applied_patches(&id).len(), 1);
    crate::daemon::kill(&daemon, "-TERM");
    let _ = daemon.wait().await;
}
