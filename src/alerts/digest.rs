//! No floods (spec §3): a chat sink (Slack, Teams) gets at most [`CHAT_MESSAGES_PER_CYCLE`]
//! messages from one cycle. Above that it gets one digest instead: how many alerts of each
//! kind and threshold, the ten nearest deadlines with their links, and the command that lists
//! the rest. This module builds the digest from the alerts it replaces and renders it; the
//! deliverer decides when to send one. JSON and command sinks never get digests.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::format::slack_escape;
use super::Alert;
use crate::config::AlertFormat;
use crate::timefmt::{human, time_left};

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
}

/// A referral among the nearest deadlines.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Nearest {
    pub(crate) what: String,
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
        }
    }

    fn headline(&self) -> String {
        format!(
            "cosell-sync: {} alerts in one cycle (one digest instead of {} messages)",
            self.total, self.total
        )
    }

    pub(crate) fn render(&self, format: AlertFormat, now: DateTime<Utc>) -> Value {
        match format {
            AlertFormat::Slack => self.slack(now),
            AlertFormat::Teams => self.teams(now),
            // Never sent: JSON sinks get one call per alert.
            AlertFormat::Json => json!({"kind": "digest", "total": self.total}),
        }
    }

    fn slack(&self, now: DateTime<Utc>) -> Value {
        let mut lines = vec![format!("*{}*", slack_escape(&self.headline()))];
        for (what, n) in &self.counts {
            lines.push(format!("• {n} × {}", slack_escape(what)));
        }
        if !self.nearest.is_empty() {
            lines.push(format!("*Nearest {} deadlines:*", self.nearest.len()));
        }
        for n in &self.nearest {
            let when = format!(
                "<!date^{}^{{date_short_pretty}} {{time}}|{}> ({} left)",
                n.deadline.timestamp(),
                human(n.deadline),
                time_left(n.deadline - now)
            );
            let what = match &n.link {
                Some(link) => format!("<{}|{}>", slack_escape(link), slack_escape(&n.what)),
                None => slack_escape(&n.what),
            };
            lines.push(format!("• {what}: {when}"));
        }
        lines.extend(self.rules.as_deref().map(slack_escape));
        lines.push(format!("The rest: `{LIST_COMMAND}`"));
        json!({
            "text": slack_escape(&self.headline()),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": lines.join("\n")}}]
        })
    }

    fn teams(&self, now: DateTime<Utc>) -> Value {
        let counts: Vec<Value> = self
            .counts
            .iter()
            .map(|(what, n)| json!({"title": n.to_string(), "value": what}))
            .collect();
        let mut body = vec![
            json!({"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": self.headline(), "wrap": true}),
            json!({"type": "FactSet", "facts": counts}),
        ];
        for n in &self.nearest {
            let at = n
                .deadline
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let what = match &n.link {
                Some(link) => format!("[{}]({link})", n.what),
                None => n.what.clone(),
            };
            body.push(json!({
                "type": "TextBlock",
                "wrap": true,
                "text": format!("{what}: {{{{DATE({at}, SHORT)}}}} {{{{TIME({at})}}}} ({} left)", time_left(n.deadline - now)),
            }));
        }
        if let Some(rules) = &self.rules {
            body.push(json!({"type": "TextBlock", "wrap": true, "text": rules}));
        }
        body.push(
            json!({"type": "TextBlock", "wrap": true, "text": format!("The rest: {LIST_COMMAND}")}),
        );
        let card = json!({
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": body,
        });
        json!({
            "type": "message",
            "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]
        })
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

/// `Referral "Deal" for Fabrikam`, or the customer, or the id.
fn describe(alert: &Alert) -> String {
    let customer = alert.customer.as_deref().unwrap_or("unknown customer");
    match (&alert.referral_name, &alert.referral_id) {
        (Some(name), _) => format!("{name} ({customer})"),
        (None, Some(id)) => format!("{id} ({customer})"),
        (None, None) => alert.message.clone(),
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
        a.referral_name = Some(format!("Deal {i} <&>"));
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
        assert!(d.nearest[0].what.starts_with("Deal 30"));
        assert!(d.nearest.windows(2).all(|w| w[0].deadline <= w[1].deadline));
        let slack = d.render(AlertFormat::Slack, now).to_string();
        assert!(slack.contains("https://pc.example/leads/r30"));
        assert!(slack.contains(LIST_COMMAND));
        assert!(!slack.contains("<&>"), "Slack text is escaped: {slack}");
        let teams = d.render(AlertFormat::Teams, now).to_string();
        assert!(teams.contains("https://pc.example/leads/r30"));
        assert!(teams.contains("AdaptiveCard"));
    }
}
