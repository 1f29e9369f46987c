//! Alert sinks' routing keys (`kinds`, `min_severity`, `thresholds` on `[[alerts.webhook]]`
//! and `[[alerts.command]]`, spec §4): the kinds that exist, severities, and their checks.

use serde::{Deserialize, Serialize};

use super::{AlertsConfig, ConfigError, HumanDuration};

/// Every alert kind a sink's `kinds` may name (spec §3).
pub const ALERT_KINDS: &[&str] = &[
    "referral_expiring",
    "referral_expired",
    "sync_unhealthy",
    "sync_recovered",
    "action_failed",
    "conflict",
    "forward_blocked",
    "link_key_changed",
    "rule_limit",
];

/// An alert's severity, least severe first (so `>=` means "at least as severe").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The severity an alert's text names; an unknown one counts as the most severe, so a
    /// filter never hides it.
    pub(crate) fn of(text: &str) -> Severity {
        match text {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            _ => Severity::Critical,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// A sink's routing keys as validation sees them: `(key prefix, kinds, thresholds)`.
type SinkKeys<'a> = (String, &'a [String], &'a [HumanDuration]);

impl AlertsConfig {
    fn sink_routes(&self) -> Vec<SinkKeys<'_>> {
        let hooks = self.webhook.iter().enumerate().map(|(i, w)| {
            (
                format!("alerts.webhook[{i}]"),
                &w.kinds[..],
                &w.thresholds[..],
            )
        });
        let commands = self.command.iter().enumerate().map(|(i, c)| {
            (
                format!("alerts.command[{i}]"),
                &c.kinds[..],
                &c.thresholds[..],
            )
        });
        hooks.chain(commands).collect()
    }

    /// A sink may only name kinds that exist and thresholds `[alerts] thresholds` has: a typo
    /// would otherwise silently route nothing to the person on call.
    pub(super) fn check_routes(&self, errors: &mut Vec<ConfigError>) {
        let known: Vec<String> = self.thresholds.iter().map(|t| t.to_string()).collect();
        for (prefix, kinds, thresholds) in self.sink_routes() {
            for kind in kinds.iter().filter(|k| !ALERT_KINDS.contains(&k.as_str())) {
                errors.push(ConfigError::new(
                    format!("{prefix}.kinds"),
                    format!(
                        "{kind:?} is not an alert kind (one of: {})",
                        ALERT_KINDS.join(", ")
                    ),
                ));
            }
            for t in thresholds.iter().filter(|t| !self.thresholds.contains(t)) {
                errors.push(ConfigError::new(
                    format!("{prefix}.thresholds"),
                    format!(
                        "\"{t}\" is not one of [alerts] thresholds ({}): no referral_expiring alert would ever have it",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
}
