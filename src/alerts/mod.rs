//! Alerts that reach people (spec §3): what is due ([`due`], pure), how each sink renders it
//! ([`format`]), and delivery ([`deliver`]): recorded before sending, retried per sink,
//! kept across restarts, never blocking or failing the sync.

pub mod deliver;
pub mod due;
pub mod format;

use serde::{Deserialize, Serialize};

pub use deliver::{AlertSettings, Sink};

/// One alert, exactly as the JSON sinks receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable dedupe key: the same across retries and restarts.
    pub id: String,
    /// `referral_expiring`, `referral_expired`, `sync_unhealthy`, `sync_recovered`,
    /// `action_failed`, `conflict` (or `test` from `alerts test`).
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    pub referral_id: Option<String>,
    /// The referral's name in Partner Center. Fields added after the first release default,
    /// so alerts stored by an older version still decode.
    #[serde(default)]
    pub referral_name: Option<String>,
    pub customer: Option<String>,
    #[serde(default)]
    pub deal_value: Option<f64>,
    #[serde(default)]
    pub currency: Option<String>,
    /// RFC 3339.
    pub deadline: Option<String>,
    /// The alert threshold crossed, as configured (`"24h"`).
    pub threshold: Option<String>,
    pub remaining_hours: Option<f64>,
    pub message: String,
    /// The referral in Partner Center.
    pub link: Option<String>,
    /// The command that shows everything about it (`cosell-sync status --referral ID`).
    #[serde(default)]
    pub command: Option<String>,
    pub created_at: String,
}

/// The command that shows a referral's timeline, lead, opportunity and alerts.
pub fn status_command(referral_id: &str) -> String {
    format!("cosell-sync status --referral {referral_id}")
}

impl Alert {
    /// An alert about no referral in particular.
    pub fn general(
        id: String,
        kind: &str,
        severity: &str,
        message: String,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Alert {
        Alert {
            id,
            kind: kind.into(),
            severity: severity.into(),
            referral_id: None,
            referral_name: None,
            customer: None,
            deal_value: None,
            currency: None,
            deadline: None,
            threshold: None,
            remaining_hours: None,
            message,
            link: None,
            command: None,
            created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}
