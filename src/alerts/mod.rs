//! Alerts that reach people (spec §3): what is due ([`due`], pure), how each sink renders it
//! ([`format`]), which sinks take it ([`route`]), digests instead of floods ([`digest`]), and
//! delivery ([`deliver`]): recorded before sending, retried per sink, kept across restarts,
//! never blocking or failing the sync.

pub(crate) mod deliver;
pub(crate) mod digest;
pub(crate) mod due;
pub(crate) mod format;
pub(crate) mod route;
pub(crate) mod unrecorded;

pub(crate) use crate::store::alerts::Alert;
pub(crate) use deliver::AlertSettings;

/// The command that shows a referral's timeline, lead, opportunity and alerts.
pub(crate) fn status_command(referral_id: &str) -> String {
    format!("cosell-sync status --referral {referral_id}")
}
