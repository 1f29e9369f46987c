//! Which alerts are due (pure; `now` is an argument). Expiry: for an incoming referral still
//! New, the tightest threshold crossed before its deadline (one alert per referral and
//! threshold, ever, because the id names both), or `referral_expired` once the deadline passed.
//! Health: `sync_unhealthy` once per episode of failing cycles, and a recovery notice.

use chrono::{DateTime, Duration, SecondsFormat, Utc};

use super::Alert;
use crate::config::HumanDuration;
use crate::deadline;
use crate::outside::Outside;
use crate::store::referrals::ReferralSummary;
use crate::timefmt::{human_in, time_left, Zone};

/// Where an alert about one record links: Partner Center's referral page, or `[aws]
/// invitation_url` for an AWS invitation (no link when that is unset).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordLinks<'a> {
    pub(crate) referral_url: &'a str,
    pub(crate) invitation_url: Option<&'a str>,
}

impl<'a> From<&'a str> for RecordLinks<'a> {
    /// Microsoft's link alone.
    fn from(referral_url: &'a str) -> Self {
        RecordLinks {
            referral_url,
            invitation_url: None,
        }
    }
}

impl RecordLinks<'_> {
    /// The link of a record of `source` (`aws` or `microsoft`).
    pub(crate) fn link(&self, source: &str, id: &str) -> Option<String> {
        match source {
            crate::store::invitations::AWS => {
                self.invitation_url.map(|url| url.replace("{id}", id))
            }
            _ => Some(self.referral_url.replace("{id}", id)),
        }
    }
}

/// The expiry alert a referral should have by now, if any; its text shows the deadline in
/// `zone` (`[alerts] timezone`, for the log and command sinks).
pub(crate) fn expiry_alert<'a>(
    referral: &ReferralSummary,
    window: Duration,
    thresholds: &[Duration],
    links: impl Into<RecordLinks<'a>>,
    zone: impl Into<Zone>,
    now: DateTime<Utc>,
) -> Option<Alert> {
    let zone = zone.into();
    let due = deadline::deadline(referral.created_at, referral.expires_at, window);
    let remaining = due - now;
    // The message is for the log, the JSON and command sinks (readers of text as text); the
    // chat formats build their own sentence from the fields, which stay outside text.
    let customer = referral
        .customer
        .as_ref()
        .map_or("unknown customer", Outside::unescaped);
    let hours = (remaining.num_minutes() as f64 / 60.0 * 10.0).round() / 10.0;
    let (noun, archived) = match referral.is_aws() {
        true => ("AWS invitation", "AWS marks it EXPIRED"),
        false => ("Referral", "Microsoft archives it as Expired"),
    };
    let what = match referral.name.as_ref().map(Outside::unescaped) {
        Some(name) => format!("{noun} \"{name}\" for {customer}"),
        None => format!("{noun} for {customer}"),
    };
    // An AWS invitation without `ExpirationDate`: InvitationDate + 15 days (spec §8).
    let estimated = match referral.deadline_estimated {
        true => ", estimated",
        false => "",
    };
    let (id, kind, severity, threshold, message) = if remaining <= Duration::zero() {
        (
            format!("referral_expired:{}", referral.id),
            "referral_expired",
            "critical",
            None,
            format!(
                "{what} passed its response deadline ({}{estimated}) unanswered; {archived}.",
                human_in(due, zone)
            ),
        )
    } else {
        let crossed = deadline::tightest_crossed(remaining, thresholds)?;
        let label = HumanDuration(crossed.to_std().ok()?).to_string();
        (
            format!("referral_expiring:{}:{label}", referral.id),
            "referral_expiring",
            if crossed <= Duration::hours(24) {
                "critical"
            } else {
                "warning"
            },
            Some(label),
            format!(
                "{what} expires in {} unless accepted or declined (deadline {}{estimated}).",
                time_left(remaining),
                human_in(due, zone)
            ),
        )
    };
    Some(Alert {
        id,
        kind: kind.into(),
        severity: severity.into(),
        referral_id: Some(referral.id.clone()),
        referral_name: referral.name.clone(),
        customer: Some(Outside::new(customer)),
        deal_value: referral.deal_value,
        currency: referral.currency.clone(),
        deadline: Some(due.to_rfc3339_opts(SecondsFormat::Secs, true)),
        threshold,
        remaining_hours: Some(hours),
        message,
        link: links.into().link(&referral.source, &referral.id),
        command: Some(super::status_command(&referral.id)),
        created_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
        action_url: None,
        rule: None,
        rule_decision: None,
        rule_mode: None,
        source: Some(referral.source.clone()),
    })
}

/// `forward_blocked`: a referral that cannot become a Google lead (a missing field, an unusable
/// amount, an unmapped product) will expire unless a person fixes something. Once per referral
/// and reason: the id carries a stable hash of the reason.
pub(crate) fn forward_blocked_alert(
    referral_id: &str,
    reason: &str,
    referral_url: &str,
    now: DateTime<Utc>,
) -> Alert {
    let mut alert = Alert::general(
        format!(
            "forward_blocked:{referral_id}:{:016x}",
            crate::config::fnv1a(reason.as_bytes())
        ),
        "forward_blocked",
        "warning",
        format!(
            "Referral {referral_id} cannot become a Google lead: {reason}. Fix the referral or [google.lead], or it expires unanswered."
        ),
        now,
    );
    alert.referral_id = Some(referral_id.to_string());
    alert.link = Some(referral_url.replace("{id}", referral_id));
    alert.command = Some(super::status_command(referral_id));
    // Only Partner Center referrals are forwarded to Google.
    alert.source = Some(crate::store::invitations::MICROSOFT.into());
    alert
}

/// `invitation_vanished`: an AWS invitation tracked while pending that AWS no longer knows
/// (`ResourceNotFoundException` when the pull read it after it left the PENDING list; spec
/// §8). Once per invitation; it is not read again.
pub(crate) fn vanished_alert(
    (id, name, customer, _since): &crate::store::invitations::VanishedRow,
    links: RecordLinks<'_>,
    now: DateTime<Utc>,
) -> Alert {
    let what = match name {
        Some(name) => format!("AWS invitation {id} (\"{name}\")"),
        None => format!("AWS invitation {id}"),
    };
    let mut alert = Alert::general(
        format!("invitation_vanished:{id}"),
        "invitation_vanished",
        "warning",
        format!(
            "{what} left the PENDING list and AWS no longer finds it (ResourceNotFoundException): it was withdrawn or deleted. Check it in AWS Partner Central; it is no longer tracked."
        ),
        now,
    );
    alert.referral_id = Some(id.clone());
    alert.referral_name = name.as_deref().map(Outside::new);
    alert.customer = customer.as_deref().map(Outside::new);
    alert.link = links.link(crate::store::invitations::AWS, id);
    alert.command = Some(super::status_command(id));
    alert.source = Some(crate::store::invitations::AWS.into());
    alert
}

/// `link_key_changed`: the action links' key is not the one earlier links were signed with (a
/// deleted `actions.key` was regenerated at start, or `key_file` names another key), so every
/// Accept/Decline link already sent stopped working. Once per new key; nothing the first time
/// a key is seen.
pub(crate) fn link_key_alert(
    previous: Option<&str>,
    current: &str,
    now: DateTime<Utc>,
) -> Option<Alert> {
    let previous = previous.filter(|p| *p != current)?;
    Some(Alert::general(
        format!("link_key_changed:{current}"),
        "link_key_changed",
        "warning",
        format!(
            "The action links' key changed (key {previous} is now {current}): every Accept/Decline link sent in an alert before {} stopped working (its page answers 403). People can answer from the next alert, with `cosell-sync accept`/`decline`, or in Partner Center. If actions.key was deleted by mistake, restore it from the backup taken with the database and restart.",
            crate::timefmt::human(now)
        ),
        now,
    ))
}

/// The sync's health episode, kept between cycles (not the daemon's liveness, which is
/// [`crate::health::Health`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct HealthEpisode {
    pub(crate) failing_in_a_row: u32,
    /// When the open unhealthy episode began (None = healthy).
    pub(crate) episode_since: Option<String>,
}

/// Updates the health after a cycle and returns the alert it calls for, if any.
pub(crate) fn health_alert(
    health: &mut HealthEpisode,
    cycle_error: Option<&str>,
    auth_failed: bool,
    failed_cycles: u32,
    now: DateTime<Utc>,
) -> Option<Alert> {
    match cycle_error {
        Some(error) => {
            health.failing_in_a_row += 1;
            let unhealthy = auth_failed || health.failing_in_a_row >= failed_cycles;
            if unhealthy && health.episode_since.is_none() {
                let since = now.to_rfc3339_opts(SecondsFormat::Secs, true);
                health.episode_since = Some(since.clone());
                let what = if auth_failed {
                    "authentication is failing".to_string()
                } else {
                    format!("{} cycles in a row failed", health.failing_in_a_row)
                };
                let hint = if auth_failed { auth_hint(error) } else { "" };
                return Some(Alert::general(
                    format!("sync_unhealthy:{since}"),
                    "sync_unhealthy",
                    "critical",
                    format!("cosell-sync is not syncing: {what}. Last error: {error}.{hint}"),
                    now,
                ));
            }
            None
        }
        None => {
            health.failing_in_a_row = 0;
            let since = health.episode_since.take()?;
            Some(Alert::general(
                format!("sync_unhealthy:{since}:recovered"),
                "sync_recovered",
                "info",
                format!("cosell-sync recovered: cycles succeed again (unhealthy since {since})."),
                now,
            ))
        }
    }
}

/// What the operator should do about an authentication failure, from its error text: a
/// wrong or expired client secret is not fixed by signing in again.
fn auth_hint(error: &str) -> &'static str {
    if error.contains("partnercentral:") {
        // The AWS client names the IAM action in every authentication failure.
        " Check the AWS credentials ([aws]) and that their IAM policy allows the action named above."
    } else if error.contains("invalid_client") || error.contains("AADSTS7000215") {
        " Check microsoft.client_secret (client secrets expire: make a new one in Entra ID) and restart."
    } else if error.contains("google") || error.contains("service-account") {
        " Check the Google service-account key ([google] credentials_file) and restart."
    } else {
        " Run `cosell-sync auth microsoft` (or check the Google key) and restart."
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn referral(created: &str, expires: Option<&str>, substatus: &str) -> ReferralSummary {
        ReferralSummary {
            id: "r1".into(),
            name: Some("Deal".into()),
            customer: Some("Fabrikam".into()),
            status: Some("New".into()),
            substatus: Some(substatus.into()),
            created_at: at(created),
            expires_at: expires.map(at),
            deal_value: None,
            currency: None,
            source: "microsoft".into(),
            deadline_estimated: false,
        }
    }

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    const URL: &str = "https://pc.example/{id}";

    fn thresholds() -> Vec<Duration> {
        vec![Duration::hours(72), Duration::hours(24), Duration::hours(4)]
    }

    fn due(r: &ReferralSummary, now: &str) -> Option<Alert> {
        expiry_alert(r, Duration::days(14), &thresholds(), URL, utc(), at(now))
    }

    #[test]
    fn each_threshold_is_crossed_in_turn() {
        // Created Nov 1 → deadline Nov 15 00:00.
        let r = referral("2026-11-01T00:00:00Z", None, "Pending");
        assert_eq!(due(&r, "2026-11-11T23:59:00Z"), None, "more than 72h left");
        let a = due(&r, "2026-11-12T00:00:00Z").unwrap();
        assert_eq!(
            (a.id.as_str(), a.threshold.as_deref()),
            ("referral_expiring:r1:72h", Some("72h"))
        );
        assert_eq!(a.deadline.as_deref(), Some("2026-11-15T00:00:00Z"));
        assert_eq!(a.remaining_hours, Some(72.0));
        assert_eq!(a.link.as_deref(), Some("https://pc.example/r1"));
        assert_eq!(
            due(&r, "2026-11-13T12:00:00Z").unwrap().id,
            "referral_expiring:r1:72h",
            "same id: deduped"
        );
        assert_eq!(
            due(&r, "2026-11-14T00:00:00Z").unwrap().id,
            "referral_expiring:r1:24h"
        );
        assert_eq!(
            due(&r, "2026-11-14T21:00:00Z").unwrap().id,
            "referral_expiring:r1:4h"
        );
        let expired = due(&r, "2026-11-15T00:00:01Z").unwrap();
        assert_eq!(
            (expired.id.as_str(), expired.kind.as_str()),
            ("referral_expired:r1", "referral_expired")
        );
        assert_eq!(expired.severity, "critical");
    }

    #[test]
    fn several_thresholds_at_once_send_the_tightest() {
        let r = referral("2026-11-01T00:00:00Z", None, "Received");
        let a = due(&r, "2026-11-14T22:00:00Z").unwrap();
        assert_eq!(a.threshold.as_deref(), Some("4h"));
        assert_eq!(a.id, "referral_expiring:r1:4h");
    }

    #[test]
    fn expiration_date_time_wins_over_the_window() {
        let r = referral(
            "2026-11-01T00:00:00Z",
            Some("2026-11-05T00:00:00Z"),
            "Pending",
        );
        let a = due(&r, "2026-11-04T01:00:00Z").unwrap();
        assert_eq!(a.threshold.as_deref(), Some("24h"));
        assert_eq!(a.deadline.as_deref(), Some("2026-11-05T00:00:00Z"));
        assert_eq!(due(&r, "2026-11-01T12:00:00Z"), None);
    }

    #[test]
    fn a_custom_window_moves_the_deadline() {
        let r = referral("2026-11-01T00:00:00Z", None, "Pending");
        let a = expiry_alert(
            &r,
            Duration::days(7),
            &thresholds(),
            URL,
            utc(),
            at("2026-11-07T12:00:00Z"),
        )
        .unwrap();
        assert_eq!(a.threshold.as_deref(), Some("24h"));
    }

    #[test]
    fn health_raises_once_per_episode_and_recovers() {
        let mut h = HealthEpisode::default();
        let now = at("2026-11-22T10:00:00Z");
        assert_eq!(health_alert(&mut h, Some("boom"), false, 3, now), None);
        assert_eq!(health_alert(&mut h, Some("boom"), false, 3, now), None);
        let a = health_alert(&mut h, Some("boom"), false, 3, now).unwrap();
        assert_eq!(
            (a.kind.as_str(), a.severity.as_str()),
            ("sync_unhealthy", "critical")
        );
        assert!(a.message.contains("3 cycles in a row"));
        assert_eq!(
            health_alert(&mut h, Some("boom"), false, 3, now),
            None,
            "once per episode"
        );
        let r = health_alert(&mut h, None, false, 3, now).unwrap();
        assert_eq!(
            (r.kind.as_str(), r.severity.as_str()),
            ("sync_recovered", "info"),
            "recovery is its own kind"
        );
        assert!(r.id.ends_with(":recovered"));
        assert_eq!(health_alert(&mut h, None, false, 3, now), None);
        let auth = health_alert(&mut h, Some("invalid_grant"), true, 3, now).unwrap();
        assert!(
            auth.message.contains("authentication"),
            "auth failures alert at once"
        );
    }

    /// A referral raised in winter whose deadline falls after the switch to summer time: a
    /// named zone shows the deadline in the offset of that day, not of today.
    #[test]
    fn a_named_zone_shows_the_deadline_in_its_own_daylight_saving_time() {
        let r = referral("2026-03-20T12:00:00Z", None, "Pending");
        let berlin = crate::timefmt::parse_zone("Europe/Berlin").unwrap();
        let a = expiry_alert(
            &r,
            Duration::days(14),
            &thresholds(),
            URL,
            berlin,
            at("2026-03-28T13:00:00Z"), // still CET here
        );
        assert!(a.is_none(), "6 days left: no threshold crossed");
        let a = expiry_alert(
            &r,
            Duration::days(14),
            &thresholds(),
            URL,
            berlin,
            at("2026-03-31T13:00:00Z"),
        )
        .unwrap();
        assert!(
            a.message.ends_with("(deadline 2026-04-03 14:00 CEST)."),
            "{}",
            a.message
        );
    }

    #[test]
    fn an_expiry_alert_carries_what_a_person_needs() {
        let mut r = referral("2026-11-01T00:00:00Z", None, "Pending");
        r.deal_value = Some(250_000.0);
        r.currency = Some("EUR".into());
        let plus_one = FixedOffset::east_opt(3600).unwrap();
        let a = expiry_alert(
            &r,
            Duration::days(14),
            &thresholds(),
            URL,
            plus_one,
            at("2026-11-12T12:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            a.message,
            "Referral \"Deal\" for Fabrikam expires in 2 d 12 h unless accepted or declined (deadline 2026-11-15 01:00 +01:00)."
        );
        assert_eq!(
            (
                a.referral_name.as_ref().map(Outside::unescaped),
                a.customer.as_ref().map(Outside::unescaped)
            ),
            (Some("Deal"), Some("Fabrikam"))
        );
        assert_eq!(
            (a.deal_value, a.currency.as_deref()),
            (Some(250_000.0), Some("EUR"))
        );
        assert_eq!(
            a.command.as_deref(),
            Some("cosell-sync status --referral r1")
        );
        assert_eq!(
            a.deadline.as_deref(),
            Some("2026-11-15T00:00:00Z"),
            "JSON stays UTC"
        );
    }

    #[test]
    fn a_wrong_client_secret_is_not_fixed_by_signing_in_again() {
        let now = at("2026-11-22T10:00:00Z");
        let secret = "token endpoint answered HTTP 401: invalid_client AADSTS7000215: Invalid client secret provided.";
        let a = health_alert(&mut HealthEpisode::default(), Some(secret), true, 3, now).unwrap();
        assert!(
            a.message.contains("microsoft.client_secret"),
            "{}",
            a.message
        );
        assert!(!a.message.contains("auth microsoft"), "{}", a.message);
        let grant = "token endpoint answered HTTP 400: invalid_grant AADSTS70000";
        let a = health_alert(&mut HealthEpisode::default(), Some(grant), true, 3, now).unwrap();
        assert!(a.message.contains("auth microsoft"), "{}", a.message);
    }

    #[test]
    fn a_changed_link_key_is_announced_once_and_a_first_key_is_not() {
        let now = at("2026-11-22T10:00:00Z");
        assert_eq!(link_key_alert(None, "aa", now), None, "the first key");
        assert_eq!(link_key_alert(Some("aa"), "aa", now), None, "the same key");
        let a = link_key_alert(Some("aa"), "bb", now).unwrap();
        assert_eq!(
            (a.id.as_str(), a.kind.as_str()),
            ("link_key_changed:bb", "link_key_changed")
        );
        assert!(a.message.contains("stopped working"), "{}", a.message);
        assert!(a.message.contains("2026-11-22 10:00 UTC"), "{}", a.message);
    }
}
