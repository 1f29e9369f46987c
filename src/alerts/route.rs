//! Which alerts each sink takes (spec §4: `kinds`, `min_severity`, `thresholds` on a webhook or
//! command sink), so a team builds an escalation ladder: the channel at 72 h, the person on
//! call at 4 h, health alerts to operations. Pure: the deliverer asks [`Route::takes`] when it
//! records an alert's deliveries and again before sending (the config may have changed since).

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

    /// Whether this sink gets the alert. `test` alerts (from `alerts test`) go everywhere.
    pub(crate) fn takes(&self, alert: &Alert) -> bool {
        if alert.kind == "test" {
            return true;
        }
        if !self.kinds.is_empty() && !self.kinds.contains(&alert.kind) {
            return false;
        }
        if Severity::of(&alert.severity) < self.min_severity {
            return false;
        }
        if alert.kind == "referral_expiring" && !self.thresholds.is_empty() {
            return alert
                .threshold
                .as_ref()
                .is_some_and(|t| self.thresholds.contains(t));
        }
        true
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
        let thresholds: Vec<&str> = match self.thresholds.is_empty() {
            true => all_thresholds,
            false => &self.thresholds[..],
        }
        .iter()
        .map(String::as_str)
        .filter(|t| expiring_severity(t) >= self.min_severity)
        .collect();
        let parts: Vec<String> = kinds
            .iter()
            .filter(|k| self.severity_allows(k))
            .filter_map(|k| match *k {
                "referral_expiring" if thresholds.is_empty() => None,
                "referral_expiring" => Some(format!("{k} at {}", thresholds.join(", "))),
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
            "conflict" | "forward_blocked" | "link_key_changed" => Severity::Warning,
            _ => Severity::Critical,
        };
        most_severe >= self.min_severity
    }
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
            assert!(r.takes(&alert(kind, "info", Some("72h"))));
        }
    }

    #[test]
    fn thresholds_limit_only_referral_expiring() {
        let r = route(&[], Severity::Info, &["4h"]);
        assert!(r.takes(&alert("referral_expiring", "critical", Some("4h"))));
        assert!(!r.takes(&alert("referral_expiring", "critical", Some("24h"))));
        assert!(!r.takes(&alert("referral_expiring", "warning", Some("72h"))));
        assert!(!r.takes(&alert("referral_expiring", "warning", None)));
        assert!(r.takes(&alert("referral_expired", "critical", None)));
        assert!(r.takes(&alert("sync_unhealthy", "critical", None)));
    }

    #[test]
    fn a_threshold_written_differently_still_matches() {
        let r = route(&[], Severity::Info, &["240m"]);
        assert!(r.takes(&alert("referral_expiring", "critical", Some("4h"))));
    }

    #[test]
    fn kinds_and_severity_filter() {
        let health = route(&["sync_unhealthy", "sync_recovered"], Severity::Info, &[]);
        assert!(health.takes(&alert("sync_recovered", "info", None)));
        assert!(!health.takes(&alert("referral_expiring", "critical", Some("4h"))));
        let loud = route(&[], Severity::Critical, &[]);
        assert!(!loud.takes(&alert("conflict", "warning", None)));
        assert!(!loud.takes(&alert("sync_recovered", "info", None)));
        assert!(loud.takes(&alert("action_failed", "critical", None)));
        // An unknown severity is never hidden.
        assert!(loud.takes(&alert("action_failed", "urgent", None)));
    }

    #[test]
    fn test_alerts_reach_every_sink() {
        let r = route(&["conflict"], Severity::Critical, &["4h"]);
        assert!(r.takes(&alert("test", "info", None)));
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
        let ops = route(&[], Severity::Critical, &[]);
        assert_eq!(
            ops.describe(&all),
            "referral_expiring at 24h, 4h; referral_expired; sync_unhealthy; action_failed (critical and above)"
        );
    }
}
