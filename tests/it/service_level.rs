//! The partner's service level (issue 19): time from a referral's creation to its answer and
//! referrals expired unanswered, derived from the stored referrals (each counted once, across
//! restarts), in `status` and `status --json`.

use chrono::{Duration, Utc};
use cosell_sync::sim::sample;
use serde_json::Value;

use crate::helpers::{stderr, stdout, TestEnv};

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_answers_time_to_answer_and_expiries_of_the_last_30_days() {
    let env = TestEnv::new().await;
    let now = Utc::now();
    let window = Duration::days(14);
    env.sim.put_referrals([
        // Created 10 h ago, answered below.
        sample::referral(0, now, Duration::hours(10), "New", "Pending"),
        // Created 30 h ago, declined below.
        sample::referral(1, now, Duration::hours(30), "New", "Pending"),
        // Two hours past its deadline, unanswered.
        sample::referral(2, now, window + Duration::hours(2), "New", "Pending"),
        // 3 h left: the nearest deadline still waiting.
        sample::referral(3, now, window - Duration::hours(3), "New", "Pending"),
    ]);
    assert!(env.run(&["sync"]).await.status.success());

    let (a, d) = (sample::referral_id(0), sample::referral_id(1));
    env.sim.edit_referral(&a, |r| {
        r["status"] = "Active".into();
        r["substatus"] = "Accepted".into();
    });
    env.sim.edit_referral(&d, |r| {
        r["status"] = "Closed".into();
        r["substatus"] = "Declined".into();
    });
    // Restarts (the binary) must not count anything twice.
    for _ in 0..3 {
        let out = env.cli(&["sync"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }

    let out = env.run(&["status", "--json"]).await;
    let status: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let block = &status["last_30_days"];
    assert_eq!(block["answered"], 2, "{block}");
    assert_eq!(block["accepted"], 1, "{block}");
    assert_eq!(block["declined"], 1, "{block}");
    assert_eq!(block["expired"], 1, "counted once: {block}");
    let median = block["median_hours_to_answer"].as_f64().unwrap();
    let p90 = block["p90_hours_to_answer"].as_f64().unwrap();
    assert!(
        (9.9..=11.0).contains(&median),
        "answered ~10 h after creation: {block}"
    );
    assert!((29.9..=31.0).contains(&p90), "{block}");
    assert_eq!(
        block["nearest_deadlines"][0]["referral_id"],
        sample::referral_id(3).as_str(),
        "{block}"
    );
    let rows: i64 = env.query(
        "SELECT COUNT(*) FROM referral_responses WHERE outcome = 'expired'",
        |r| r.get(0),
    );
    assert_eq!(rows, 1);

    let text = stdout(&env.run(&["status"]).await);
    assert!(text.contains("Last 30 days:"), "{text}");
    assert!(
        text.contains("answered 2 (1 accepted, 1 declined)"),
        "{text}"
    );
    assert!(text.contains("expired unanswered: 1"), "{text}");
}
