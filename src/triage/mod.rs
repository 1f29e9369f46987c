//! Triage (spec §7): rules that answer what a team always answers the same way. The pure
//! part is here — the source-neutral [`facts`] a rule reads and the [`rules`] evaluator;
//! [`cycle`] records the decisions each cycle, and in apply mode queues rule answers under
//! the hourly cap.

pub(crate) mod cycle;
pub(crate) mod facts;
pub(crate) mod rules;

use crate::store::triage::{DecisionRow, HELD, QUEUED};

/// What the rules decided about one referral, in the words every surface uses (`status`,
/// the action page, the inbox): "rule outside-territory would decline: Customer is
/// outside our region" in a dry run.
pub(crate) fn sentence(d: &DecisionRow) -> String {
    let Some(rule) = d.rule.as_deref() else {
        return "no rule decides it".into();
    };
    let reason = d
        .reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default();
    match (d.decision.as_deref(), d.state.as_str()) {
        (Some("none"), _) | (None, _) => format!("rule {rule} leaves it to people"),
        (Some(verb), QUEUED) => format!("rule {rule} {}{reason} (answer queued)", past(verb)),
        (Some(verb), HELD) => format!(
            "rule {rule} will {verb}{reason} (held by [triage] max_answers_per_hour; decided again each cycle)"
        ),
        (Some(verb), _) => format!("rule {rule} would {verb}{reason}"),
    }
}

fn past(verb: &str) -> &str {
    match verb {
        "accept" => "accepted",
        "decline" => "declined",
        other => other,
    }
}

/// An alert about a referral the rules decided carries the decision (spec §3: `rule`,
/// `rule_decision`, `rule_mode`), and its text says it.
pub(crate) fn annotate(alert: &mut crate::store::alerts::Alert, d: &DecisionRow) {
    let Some(rule) = &d.rule else {
        return;
    };
    alert.rule = Some(rule.clone());
    alert.rule_decision = d.decision.clone();
    alert.rule_mode = Some(d.mode.clone());
    alert.message = format!("{} Triage: {}.", alert.message, sentence(d));
}

/// The digest's sentence about the rules' dry-run declines among its alerts' referrals:
/// "12 of these would be declined by rules; switch [triage] mode to apply". Each item is an
/// alert's (`rule_decision`, `rule_mode`).
pub(crate) fn digest_sentence<'a>(
    decisions: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> Option<String> {
    let n = decisions
        .into_iter()
        .filter(|(d, m)| *d == Some("decline") && *m == Some("dry-run"))
        .count();
    (n > 0)
        .then(|| format!("{n} of these would be declined by rules; switch [triage] mode to apply"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rule: Option<&str>, decision: Option<&str>, state: &str) -> DecisionRow {
        DecisionRow {
            referral_id: "r".into(),
            source: "microsoft".into(),
            rule: rule.map(str::to_string),
            decision: decision.map(str::to_string),
            reason: (decision == Some("decline")).then(|| "Outside our region".into()),
            mode: "dry-run".into(),
            state: state.into(),
            deadline: chrono::Utc::now(),
        }
    }

    #[test]
    fn every_surface_says_a_decision_the_same_way() {
        assert_eq!(
            sentence(&row(Some("x"), Some("decline"), "shown")),
            "rule x would decline: Outside our region"
        );
        assert_eq!(
            sentence(&row(Some("x"), Some("accept"), "queued")),
            "rule x accepted (answer queued)"
        );
        assert!(
            sentence(&row(Some("x"), Some("decline"), "held")).starts_with("rule x will decline")
        );
        assert_eq!(
            sentence(&row(Some("k"), Some("none"), "shown")),
            "rule k leaves it to people"
        );
        assert_eq!(sentence(&row(None, None, "shown")), "no rule decides it");
    }

    #[test]
    fn the_digest_counts_dry_run_declines_only() {
        let items = [
            (Some("decline"), Some("dry-run")),
            (Some("decline"), Some("dry-run")),
            (Some("decline"), Some("apply")),
            (Some("accept"), Some("dry-run")),
            (None, None),
        ];
        assert_eq!(
            digest_sentence(items).as_deref(),
            Some("2 of these would be declined by rules; switch [triage] mode to apply")
        );
        assert_eq!(digest_sentence([(None, None)]), None);
    }

    /// A chat digest says how many of its referrals the rules would decline.
    #[test]
    fn a_digest_says_how_many_the_rules_would_decline() {
        use crate::alerts::digest::Digest;
        use crate::config::AlertFormat;
        let now = chrono::Utc::now();
        let alerts: Vec<crate::store::alerts::Alert> = (0..14)
            .map(|i| {
                let mut a = crate::store::alerts::Alert::general(
                    format!("referral_expiring:r{i}:72h"),
                    "referral_expiring",
                    "warning",
                    "m".into(),
                    now,
                );
                let d = row(
                    Some("outside"),
                    Some(if i < 12 { "decline" } else { "accept" }),
                    "shown",
                );
                annotate(&mut a, &d);
                a
            })
            .collect();
        let refs: Vec<&crate::store::alerts::Alert> = alerts.iter().collect();
        let digest = Digest::of(&refs);
        let want = "12 of these would be declined by rules; switch [triage] mode to apply";
        for format in [AlertFormat::Slack, AlertFormat::Teams] {
            let text = digest.render(format, now).to_string();
            assert!(text.contains(want), "{format:?}: {text}");
        }
    }
}
