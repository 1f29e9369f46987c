//! The response deadline of an incoming referral (pure): `expirationDateTime` when Microsoft
//! gives one, else `createdDateTime` plus the configured response window (14 days by default).

use chrono::{DateTime, Duration, Utc};

/// When Microsoft archives the referral as Closed/Expired if nobody answers.
pub(crate) fn deadline(
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    response_window: Duration,
) -> DateTime<Utc> {
    expires_at.unwrap_or(created_at + response_window)
}

/// The tightest threshold already crossed (`remaining <= threshold`), if any.
pub(crate) fn tightest_crossed(remaining: Duration, thresholds: &[Duration]) -> Option<Duration> {
    thresholds.iter().copied().filter(|t| remaining <= *t).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn expiration_wins_over_the_window() {
        let created = at("2026-11-01T00:00:00Z");
        assert_eq!(
            deadline(created, None, Duration::days(14)),
            at("2026-11-15T00:00:00Z")
        );
        assert_eq!(
            deadline(
                created,
                Some(at("2026-11-10T00:00:00Z")),
                Duration::days(14)
            ),
            at("2026-11-10T00:00:00Z")
        );
    }

    #[test]
    fn the_tightest_crossed_threshold_is_chosen() {
        let th = [Duration::hours(72), Duration::hours(24), Duration::hours(4)];
        assert_eq!(tightest_crossed(Duration::hours(100), &th), None);
        assert_eq!(
            tightest_crossed(Duration::hours(72), &th),
            Some(Duration::hours(72))
        );
        assert_eq!(
            tightest_crossed(Duration::hours(3), &th),
            Some(Duration::hours(4))
        );
        assert_eq!(
            tightest_crossed(Duration::hours(-1), &th),
            Some(Duration::hours(4))
        );
    }
}
