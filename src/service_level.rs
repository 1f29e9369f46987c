//! The partner's service level: how fast referrals are answered and how many expire unanswered
//! (the number its Microsoft relationship is judged on). After each cycle [`settle`] closes the
//! waits that ended (from the stored referrals, so each is counted once across restarts) and
//! records them in the metrics; [`last_days`] is the `status` block.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::store::responses::{self, Settled};
use crate::store::{Store, StoreError};

/// Closes the waits that ended since the last cycle and records them: the answer-time
/// histogram by outcome, the expired counter. Errors are logged; this never fails a cycle.
pub(crate) async fn settle(store: &Store, window: Duration, now: DateTime<Utc>) -> Vec<Settled> {
    match store.call(move |c| responses::settle(c, window, now)).await {
        Ok(settled) => {
            record(&settled);
            settled
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record referral response times");
            Vec::new()
        }
    }
}

fn record(settled: &[Settled]) {
    let metrics = crate::metrics::global();
    let mut expired = 0;
    for s in settled {
        match s.outcome {
            "accepted" | "declined" => metrics.referral_answered(s.outcome, s.seconds as f64),
            "expired" => expired += 1,
            _ => {}
        }
    }
    if expired > 0 {
        metrics.referrals_expired_unanswered(expired);
    }
}

/// `status`'s "last 30 days" block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ServiceLevel {
    pub(crate) days: i64,
    /// Accepted plus declined.
    pub(crate) answered: u64,
    pub(crate) accepted: u64,
    pub(crate) declined: u64,
    /// From creation to answer, over the answered ones (None before the first answer).
    pub(crate) median_hours_to_answer: Option<f64>,
    pub(crate) p90_hours_to_answer: Option<f64>,
    pub(crate) expired: u64,
    /// The referrals still waiting whose deadlines come first.
    pub(crate) nearest_deadlines: Vec<NearestDeadline>,
    /// The same counts per source (Microsoft referrals, AWS invitations), and how many of
    /// each wait now.
    pub(crate) by_source: Vec<responses::SourceCounts>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct NearestDeadline {
    pub(crate) referral_id: String,
    /// `microsoft` or `aws`.
    pub(crate) source: String,
    pub(crate) customer: Option<String>,
    pub(crate) deadline: DateTime<Utc>,
    pub(crate) remaining_hours: f64,
}

/// How many nearest deadlines the block shows.
const NEAREST: usize = 5;

/// The block for the last `days` days; `nearest` are the waiting referrals, nearest first.
pub(crate) fn last_days(
    conn: &rusqlite::Connection,
    days: i64,
    now: DateTime<Utc>,
    nearest: impl IntoIterator<Item = NearestDeadline>,
) -> Result<ServiceLevel, StoreError> {
    let w = responses::window(conn, days, now)?;
    let hours = |q: f64| percentile(&w.answer_seconds, q).map(|s| round1(s as f64 / 3600.0));
    Ok(ServiceLevel {
        days,
        answered: w.accepted + w.declined,
        accepted: w.accepted,
        declined: w.declined,
        median_hours_to_answer: hours(0.5),
        p90_hours_to_answer: hours(0.9),
        expired: w.expired,
        nearest_deadlines: nearest.into_iter().take(NEAREST).collect(),
        by_source: responses::by_source(conn, days, now)?,
    })
}

/// The nearest-rank percentile of ascending `sorted` values (`q` in 0..=1).
pub(crate) fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7], 0.9), Some(7));
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(percentile(&v, 0.5), Some(5));
        assert_eq!(percentile(&v, 0.9), Some(9));
        assert_eq!(percentile(&v, 1.0), Some(10));
        assert_eq!(percentile(&v, 0.0), Some(1));
    }

    #[test]
    fn percentiles_of_generated_samples_stay_within_the_samples() {
        let mut rng = fastrand::Rng::with_seed(19);
        for _ in 0..500 {
            let n = rng.usize(1..200);
            let mut v: Vec<i64> = (0..n).map(|_| rng.i64(0..30 * 86_400)).collect();
            v.sort_unstable();
            let (median, p90) = (percentile(&v, 0.5).unwrap(), percentile(&v, 0.9).unwrap());
            assert!(v.contains(&median) && v.contains(&p90));
            assert!(median <= p90);
            let below = v.iter().filter(|x| **x <= p90).count();
            assert!(below * 10 >= n * 9, "{below} of {n} at or below p90");
        }
    }
}
