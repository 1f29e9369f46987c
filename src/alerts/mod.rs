//! Alerts that reach people (spec §3): what is due ([`due`], pure), how each sink renders it
//! ([`format`]), which sinks take it ([`route`]), digests instead of floods ([`digest`]), and
//! delivery ([`deliver`]): recorded before sending, retried per sink, kept across restarts,
//! never blocking or failing the sync.

pub mod deliver;
pub mod digest;
pub mod due;
pub mod format;
pub mod route;

pub use crate::store::alerts::Alert;
pub use deliver::{AlertSettings, Sink};

/// The command that shows a referral's timeline, lead, opportunity and alerts.
pub fn status_command(referral_id: &str) -> String {
    format!("cosell-sync status --referral {referral_id}")
}
