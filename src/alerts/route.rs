//! Which alerts each sink takes (spec §4: `kinds`, `min_severity`, `thresholds` on a webhook or
//! command sink), so a team builds an escalation ladder: the channel at 72 h, the person on
//! call at 4 h, health alerts to operations. A sink limited to thresholds also gets the
//! alert that skipped past one of them (a referral first seen late, the daemon down, a deadline
//! moved earlier), so no referral falls between the sinks. Pure: the deliverer asks
//! [`Route::takes`], with the thresholds already alerted for the referral, when it records an
//! alert's deliveries and again before sending (the config may have changed since).

use super::Alert;
use crate::config::{HumanDuration, Severity, ALERT_KINDS};

/// One sink's filter; the default takes everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Route {
    /// Empty = every kind.
    pub(crate) kinds: Vec<String>,
    pub(crate) min_severity: Severity,
    /// `referral_expiring` thresholds as alerts name them (`"4h"`); empty = all.
    pub(crate) thresholds: Vec<String>,
}

impl Route {
    pub(crate) fn new(
        kinds: &[String],
        min_severity: Severity,
        thresholds: &[HumanDuration],
    ) -> Route {
        Route {
            kinds: kinds.to_vec(),
            min_severity,
            // Alerts carry the threshold in this same canonical form ("240m" → "4h").
            thresholds: thresholds.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// Whether a sink with thresholds needs to know what else was alerted for the referral
    /// before it can decide on this alert (see [`Route::takes`]).
    pub(crate) fn needs_history(&self, alert: &Alert) -> bool {
        alert.kind == "referral_expiring" && !self.thresholds.is_empty()
    }

    /// Whether this sink gets the alert. `test` alerts (from `alerts test`) go everywhere.
    /// `alerted`: the thresholds (`"72h"`) the alert's referral already has an expiring alert
    /// for (spec §3: an alert at T reaches a sink with thresholds S when T is in S, or when
    /// some s in S with s > T got no alert for this referral).
    pub(crate) fn takes(&self, alert: &Alert, alerted: &[String]) -> bool {
        if alert.kind == "test" {
            return true;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&alert.kind) {
            return false;
        }
        if Severity::of(&alert.severity) < self.min_severity {
            return false;
        }
        if self.needs_history(alert) {
            let Some(t) = alert.threshold.as_deref() else {
                return false;
            };
            return self.thresholds.iter().any(|s| s == t)
                || self
                    .skipped_past(t)
                    .any(|s| !alerted.iter().any(|a| a == s));
        }
        true
    }

    /// This sink's thresholds wider than `threshold` (which an alert at `threshold` may have
    /// skipped past).
    fn skipped_past<'a>(&'a self, threshold: &str) -> impl Iterator<Item = &'a String> + 'a {
        let t = threshold.parse::<HumanDuration>().ok();
        self.thresholds
            .iter()
            .filter(move |s| match (t, s.parse::<HumanDuration>()) {
                (Some(t), Ok(s)) => s.0 > t.0,
                _ => false,
            })
    }

    /// The thresholds whose alerts can reach this sink: its own, and (when one of its own was
    /// skipped) every tighter one.
    fn thresholds_reaching<'a>(&self, all_thresholds: &'a [String]) -> Vec<&'a str> {
        all_thresholds
            .iter()
            .filter(|t| {
                self.thresholds.is_empty()
                    || self.thresholds.contains(t)
                    || self.skipped_past(t).next().is_some()
            })
            .filter(|t| expiring_severity(t) >= self.min_severity)
            .map(String::as_str)
            .collect()
    }

    /// What the sink gets, for `alerts test` and `check-config` readers:
    /// `referral_expiring at 4h; referral_expired; … (warning and above)`.
    pub(crate) fn describe(&self, all_thresholds: &[String]) -> String {
        let kinds: Vec<&str> = match self.kinds.is_empty() {
            true => ALERT_KINDS.to_vec(),
            false => ALERT_KINDS
                .iter()
                .copied()
                .filter(|k| self.kinds.iter().any(|mine| mine == k))
                .collect(),
        };
        let reaching = self.thresholds_reaching(all_thresholds);
        let (own, skipped): (Vec<&str>, Vec<&str>) = reaching
            .iter()
            .partition(|t| self.thresholds.is_empty() || self.thresholds.iter().any(|s| s == *t));
        let expiring = match (own.is_empty(), skipped.is_empty()) {
            (true, true) => None,
            (false, true) => Some(format!("at {}", own.join(", "))),
            (own_empty, false) => {
                let wider: Vec<&str> = self
                    .thresholds
                    .iter()
                    .filter(|s| {
                        skipped
                            .iter()
                            .any(|t| self.skipped_past(t).any(|w| w == *s))
                    })
                    .map(String::as_str)
                    .collect();
                let wider = wider.join(" or ");
                let extra = format!("{} if {wider} was skipped", skipped.join(", "));
                Some(match own_empty {
                    true => format!("at {extra}"),
                    false => format!("at {} ({extra})", own.join(", ")),
                })
            }
        };
        let parts: Vec<String> = kinds
            .iter()
            .filter(|k| self.severity_allows(k))
            .filter_map(|k| match *k {
                "referral_expiring" => expiring.as_ref().map(|e| format!("{k} {e}")),
                other => Some(other.to_string()),
            })
            .collect();
        let floor = match self.min_severity {
            Severity::Info => String::new(),
            s => format!(" ({} and above)", s.as_str()),
        };
        match parts.is_empty() {
            true => format!("nothing{floor}"),
            false => format!("{}{floor}", parts.join("; ")),
        }
    }

    /// Whether any alert of this kind can pass the severity floor (each kind has a fixed
    /// severity, except `referral_expiring`: critical from 24 h, warning above).
    fn severity_allows(&self, kind: &str) -> bool {
        let most_severe = match kind {
            "sync_recovered" => Severity::Info,
            "conflict" | "forward_blocked" | "link_key_changed" | "rule_limit" => Severity::Warning,
            _ => Severity::Critical,
        };
        most_severe >= self.min_severity
    }
}

/// The `[alerts] thresholds` whose `referral_expiring` alerts reach none of these sinks (only
/// the log): `check-config` and `alerts test` warn about them.
pub(crate) fn unreached_thresholds(routes: &[Route], all_thresholds: &[String]) -> Vec<String> {
    all_thresholds
        .iter()
        .filter(|t| {
            !routes.iter().any(|r| {
                (r.kinds.is_empty() || r.kinds.iter().any(|k| k == "referral_expiring"))
                    && r.thresholds_reaching(all_thresholds).contains(&t.as_str())
            })
        })
        .cloned()
        .collect()
}

/// The severity of a `referral_expiring` alert at this threshold (as [`super::due`] raises
/// it: critical from 24 h down, warning above).
fn expiring_severity(threshold: &str) -> Severity {
    match threshold.parse::<HumanDuration>() {
        Ok(t) if t.0 > std::time::Duration::from_secs(24 * 3600) => Severity::Warning,
        _ => Severity::Critical,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: &str, severity: &str, threshold: Option<&str>) -> Alert {
        let mut a = Alert::general(
            format!("{kind}:x"),
            kind,
            severity,
            "m".into(),
            chrono::Utc::now(),
        );
        a.threshold = threshold.map(String::from);
        a
    }

    fn route(kinds: &[&str], min: Severity, thresholds: &[&str]) -> Route {
        let kinds: Vec<String> = kinds.iter().map(|s| s.to_string()).collect();
        let thresholds: Vec<HumanDuration> =
            thresholds.iter().map(|t| t.parse().unwrap()).collect();
        Route::new(&kinds, min, &thresholds)
    }

    #[test]
    fn the_default_route_takes_everything() {
        let r = Route::default();
        for kind in ALERT_KINDS {
            assert!(r.takes(&alert(kind, "info", Some("72h")), &[]));
        }
    }

    #[test]
    fn thresholds_limit_only_referral_expiring() {
        let r = route(&[], Severity::Info, &["4h"]);
        assert!(r.takes(&alert("referral_expiring", "critical", Some("4h")), &[]));
        assert!(!r.takes(&alert("referral_expiring", "critical", Some("24h")), &[]));
        assert!(!r.takes(&alert("referral_expiring", "warning", Some("72h")), &[]));
        assert!(!r.takes(&alert("referral_expiring", "warning", None), &[]));
        assert!(r.takes(&alert("referral_expired", "critical", None), &[]));
        assert!(r.takes(&alert("sync_unhealthy", "critical", None), &[]));
    }

    #[test]
    fn an_alert_that_skipped_past_a_sinks_threshold_reaches_it() {
        let expiring = |t: &str| alert("referral_expiring", "critical", Some(t));
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let channel = route(&[], Severity::Info, &["72h"]);
        let oncall = route(&[], Severity::Info, &["4h"]);
        // First seen 19 h 57 min before the deadline: only the 24 h alert exists.
        assert!(channel.takes(&expiring("24h"), &owned(&["24h"])));
        assert!(!oncall.takes(&expiring("24h"), &owned(&["24h"])));
        // The channel had its 72 h alert: the 24 h one is not its.
        assert!(!channel.takes(&expiring("24h"), &owned(&["72h", "24h"])));
        // 72 h never alerted for this referral: the 4 h alert reaches the channel too.
        assert!(channel.takes(&expiring("4h"), &owned(&["24h", "4h"])));
        assert!(oncall.takes(&expiring("4h"), &owned(&["24h", "4h"])));
        // Only wider thresholds count: a tighter one skipped says nothing.
        let day = route(&[], Severity::Info, &["24h"]);
        assert!(!day.takes(&expiring("72h"), &owned(&["72h"])));
        // Thresholds written differently compare as durations.
        let hours = route(&[], Severity::Info, &["4320m"]);
        assert!(hours.takes(&expiring("24h"), &owned(&["24h"])));
    }

    #[test]
    fn unreached_thresholds_are_named() {
        let all = vec!["72h".to_string(), "24h".into(), "4h".into()];
        let ladder = [
            route(&[], Severity::Info, &["72h"]),
            route(&[], Severity::Info, &["4h"]),
        ];
        assert!(unreached_thresholds(&ladder, &all).is_empty());
        let oncall_only = [route(&[], Severity::Info, &["4h"])];
        assert_eq!(unreached_thresholds(&oncall_only, &all), ["72h", "24h"]);
        let health_only = [route(&["sync_unhealthy"], Severity::Info, &[])];
        assert_eq!(unreached_thresholds(&health_only, &all), all);
        // 72 h alerts are warnings: a critical-only sink never gets them.
        let loud = [route(&[], Severity::Critical, &[])];
        assert_eq!(unreached_thresholds(&loud, &all), ["72h"]);
    }

    #[test]
    fn a_threshold_written_differently_still_matches() {
        let r = route(&[], Severity::Info, &["240m"]);
        assert!(r.takes(&alert("referral_expiring", "critical", Some("4h")), &[]));
    }

    #[test]
    fn kinds_and_severity_filter() {
        let health = route(&["sync_unhealthy", "sync_recovered"], Severity::Info, &[]);
        assert!(health.takes(&alert("sync_recovered", "info", None), &[]));
        assert!(!health.takes(&alert("referral_expiring", "critical", Some("4h")), &[]));
        let loud = route(&[], Severity::Critical, &[]);
        assert!(!loud.takes(&alert("conflict", "warning", None), &[]));
        assert!(!loud.takes(&alert("sync_recovered", "info", None), &[]));
        assert!(loud.takes(&alert("action_failed", "critical", None), &[]));
        // An unknown severity is never hidden.
        assert!(loud.takes(&alert("action_failed", "urgent", None), &[]));
    }

    #[test]
    fn test_alerts_reach_every_sink() {
        let r = route(&["conflict"], Severity::Critical, &["4h"]);
        assert!(r.takes(&alert("test", "info", None), &[]));
    }

    #[test]
    fn describe_names_kinds_and_thresholds() {
        let all = vec!["72h".to_string(), "24h".into(), "4h".into()];
        let r = route(
            &["referral_expiring", "referral_expired"],
            Severity::Info,
            &["4h"],
        );
        assert_eq!(
            r.describe(&all),
            "referral_expiring at 4h; referral_expired"
        );
        let channel = route(&[], Severity::Info, &["72h"]);
        assert!(
            channel.describe(&all).starts_with(
                "referral_expiring at 72h (24h, 4h if 72h was skipped); referral_expired;"
            ),
            "{}",
            channel.describe(&all)
        );
        let ops = route(&[], Severity::Critical, &[]);
        assert_eq!(
            ops.describe(&all),
            "referral_expiring at 24h, 4h; referral_expired; sync_unhealthy; action_failed (critical and above)"
        );
    }
}
