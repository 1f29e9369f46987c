//! No floods (spec §3): a chat sink (Slack, Teams) gets at most [`CHAT_MESSAGES_PER_CYCLE`]
//! messages from one cycle. Above that it gets one digest instead: how many alerts of each
//! kind and threshold, the ten nearest deadlines with their links, and the command that lists
//! the rest. This module builds the digest from the alerts it replaces; each chat format
//! renders it beside its single alert ([`super::format`]); the deliverer decides when to send
//! one. JSON and command sinks never get digests.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Alert;
use crate::config::AlertFormat;
use crate::outside::Outside;

/// The most messages one cycle sends to one chat sink.
pub(crate) const CHAT_MESSAGES_PER_CYCLE: usize = 10;

/// How many deadlines a digest lists.
const NEAREST: usize = 10;

/// The command that lists every alert (a digest names it for the rest).
pub(crate) const LIST_COMMAND: &str = "cosell-sync alerts list --limit 5000";

/// One digest: what it replaces, counted, and the nearest deadlines.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Digest {
    pub(crate) total: usize,
    /// `("referral_expiring at 72h", 1200)`, tightest thresholds and worst kinds first.
    pub(crate) counts: Vec<(String, usize)>,
    pub(crate) nearest: Vec<Nearest>,
    /// "12 of these would be declined by rules; …" (spec §7), when the rules preview any.
    pub(crate) rules: Option<String>,
    /// `{public_url}/inbox` when the inbox is on (spec §7): the page that answers the rest.
    pub(crate) inbox: Option<String>,
}

/// A referral among the nearest deadlines.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Nearest {
    /// `Deal (Customer)`: outside text.
    pub(crate) what: Outside,
    pub(crate) deadline: DateTime<Utc>,
    pub(crate) link: Option<String>,
}

impl Digest {
    pub(crate) fn of(alerts: &[&Alert]) -> Digest {
        let mut counts: BTreeMap<(u8, i64, String), usize> = BTreeMap::new();
        for alert in alerts {
            *counts.entry(count_key(alert)).or_default() += 1;
        }
        let mut with_deadline: Vec<(DateTime<Utc>, &Alert)> = alerts
            .iter()
            .filter_map(|a| Some((parse(a.deadline.as_deref()?)?, *a)))
            .collect();
        with_deadline.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.id.cmp(&b.1.id)));
        let nearest = with_deadline
            .into_iter()
            .take(NEAREST)
            .map(|(deadline, a)| Nearest {
                what: describe(a),
                deadline,
                link: a.link.clone(),
            })
            .collect();
        Digest {
            total: alerts.len(),
            counts: counts.into_iter().map(|((_, _, k), n)| (k, n)).collect(),
            nearest,
            rules: crate::triage::digest_sentence(
                alerts
                    .iter()
                    .map(|a| (a.rule_decision.as_deref(), a.rule_mode.as_deref())),
            ),
            inbox: None,
        }
    }

    /// The digest linking to the team's inbox (`None`: the inbox is off).
    pub(crate) fn with_inbox(mut self, inbox: Option<String>) -> Digest {
        self.inbox = inbox;
        self
    }

    pub(crate) fn headline(&self) -> String {
        format!(
            "cosell-sync: {} alerts in one cycle (one digest instead of {} messages)",
            self.total, self.total
        )
    }

    /// The digest as `format` shows it (each chat format renders it beside its single alert).
    pub(crate) fn render(&self, format: AlertFormat, now: DateTime<Utc>) -> Value {
        super::format::render_digest(format, self, now)
    }
}

/// Sort key and label of an alert in the counts: expired first, then expiring by tightest
/// threshold, then everything else by kind.
fn count_key(alert: &Alert) -> (u8, i64, String) {
    match (alert.kind.as_str(), alert.threshold.as_deref()) {
        ("referral_expired", _) => (0, 0, "referral_expired".into()),
        ("referral_expiring", Some(t)) => {
            let seconds = t
                .parse::<crate::config::HumanDuration>()
                .map(|d| d.0.as_secs() as i64)
                .unwrap_or(i64::MAX);
            (1, seconds, format!("referral_expiring at {t}"))
        }
        (kind, _) => (2, 0, kind.to_string()),
    }
}

/// `Deal (Fabrikam)`, or the id and the customer, or the message: outside text all of it.
fn describe(alert: &Alert) -> Outside {
    let customer = alert
        .customer
        .as_ref()
        .map_or("unknown customer", Outside::unescaped);
    // An AWS invitation says so: the reader answers it in another console.
    let aws = match alert.source.as_deref() {
        Some(crate::store::invitations::AWS) => "AWS: ",
        _ => "",
    };
    match (&alert.referral_name, &alert.referral_id) {
        (Some(name), _) => Outside::new(format!("{aws}{} ({customer})", name.unescaped())),
        (None, Some(id)) => Outside::new(format!("{aws}{id} ({customer})")),
        (None, None) => Outside::new(alert.message.as_str()),
    }
}

fn parse(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiring(i: usize, threshold: &str, hours_left: i64, now: DateTime<Utc>) -> Alert {
        let mut a = Alert::general(
            format!("referral_expiring:r{i}:{threshold}"),
            "referral_expiring",
            "warning",
            "m".into(),
            now,
        );
        a.referral_id = Some(format!("r{i}"));
        a.referral_name = Some(format!("Deal {i} <&>").into());
        a.customer = Some("Fabrikam".into());
        a.threshold = Some(threshold.into());
        a.deadline = Some((now + chrono::Duration::hours(hours_left)).to_rfc3339());
        a.link = Some(format!("https://pc.example/leads/r{i}"));
        a
    }

    #[test]
    fn counts_by_threshold_and_lists_the_ten_nearest() {
        let now = Utc::now();
        let mut alerts: Vec<Alert> = (0..30)
            .map(|i| expiring(i, "72h", 50 + i as i64, now))
            .collect();
        alerts.extend((30..35).map(|i| expiring(i, "4h", 2 + i as i64 - 30, now)));
        let refs: Vec<&Alert> = alerts.iter().collect();
        let d = Digest::of(&refs);
        assert_eq!(d.total, 35);
        assert_eq!(
            d.counts,
            vec![
                ("referral_expiring at 4h".to_string(), 5),
                ("referral_expiring at 72h".to_string(), 30)
            ]
        );
        assert_eq!(d.nearest.len(), 10);
        assert!(d.nearest[0].what.unescaped().starts_with("Deal 30"));
        assert!(d.nearest.windows(2).all(|w| w[0].deadline <= w[1].deadline));
        let slack = d.render(AlertFormat::Slack, now).to_string();
        assert!(slack.contains("https://pc.example/leads/r30"));
        assert!(slack.contains(LIST_COMMAND));
        assert!(!slack.contains("<&>"), "Slack text is escaped: {slack}");
        let teams = d.render(AlertFormat::Teams, now).to_string();
        assert!(teams.contains("https://pc.example/leads/r30"));
        assert!(teams.contains("AdaptiveCard"));
    }

    /// With the inbox on, a digest links to it in every chat format (the page that answers
    /// the rest at once); without it, no such link.
    #[test]
    fn a_digest_links_to_the_inbox_when_it_is_on() {
        let now = Utc::now();
        let alerts: Vec<Alert> = (0..12)
            .map(|i| expiring(i, "24h", 10 + i as i64, now))
            .collect();
        let refs: Vec<&Alert> = alerts.iter().collect();
        let inbox = "https://sync.example.com/act/inbox";
        for format in [AlertFormat::Slack, AlertFormat::Teams] {
            let off = Digest::of(&refs).render(format, now).to_string();
            assert!(!off.contains("/inbox"), "{off}");
            let on = Digest::of(&refs)
                .with_inbox(Some(inbox.into()))
                .render(format, now)
                .to_string();
            let link = match format {
                AlertFormat::Slack => format!("<{inbox}|"),
                _ => format!("]({inbox})"),
            };
            assert!(on.contains(&link), "{format:?}: {on}");
        }
    }

    /// A nearest deadline already past reads `expired`, not `(expired left)`.
    #[test]
    fn a_past_deadline_reads_expired() {
        let now = Utc::now();
        let alerts = [expiring(1, "4h", -2, now), expiring(2, "4h", 3, now)];
        let d = Digest::of(&alerts.iter().collect::<Vec<_>>());
        for format in [AlertFormat::Slack, AlertFormat::Teams] {
            let text = d.render(format, now).to_string();
            assert!(!text.contains("expired left"), "{text}");
            assert!(
                text.contains("(expired)") && text.contains(" left)"),
                "{text}"
            );
        }
    }
}
