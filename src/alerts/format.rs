//! How each webhook format renders an alert: `json` is the alert itself; `slack` is an
//! incoming-webhook message (text plus blocks); `teams` is a message carrying an Adaptive Card,
//! as Teams workflow webhooks take. Both human formats show the customer, the time left and
//! the link to the referral.

use serde_json::{json, Value};

use super::Alert;
use crate::config::AlertFormat;

pub fn render(format: AlertFormat, alert: &Alert) -> Value {
    match format {
        AlertFormat::Json => serde_json::to_value(alert).expect("alerts serialize"),
        AlertFormat::Slack => slack(alert),
        AlertFormat::Teams => teams(alert),
    }
}

fn title(alert: &Alert) -> String {
    let icon = match alert.severity.as_str() {
        "critical" => "🔴",
        "warning" => "🟠",
        _ => "🟢",
    };
    let what = match alert.kind.as_str() {
        "referral_expiring" => "Co-sell referral expiring",
        "referral_expired" => "Co-sell referral expired",
        "sync_unhealthy" if alert.severity == "info" => "cosell-sync recovered",
        "sync_unhealthy" => "cosell-sync needs attention",
        "action_failed" => "A sync write failed",
        "conflict" => "Sync conflict needs a decision",
        "test" => "cosell-sync test alert",
        other => other,
    };
    format!("{icon} {what}")
}

fn facts(alert: &Alert) -> Vec<(&'static str, String)> {
    let mut facts = Vec::new();
    if let Some(c) = &alert.customer {
        facts.push(("Customer", c.clone()));
    }
    if let Some(h) = alert.remaining_hours {
        let left = if h <= 0.0 {
            "expired".to_string()
        } else {
            format!("{h:.1} hours")
        };
        facts.push(("Time left", left));
    }
    if let Some(d) = &alert.deadline {
        facts.push(("Deadline", d.clone()));
    }
    if let Some(r) = &alert.referral_id {
        facts.push(("Referral", r.clone()));
    }
    facts
}

fn slack(alert: &Alert) -> Value {
    let mut lines = vec![format!("*{}*", title(alert)), alert.message.clone()];
    for (k, v) in facts(alert) {
        lines.push(format!("*{k}:* {v}"));
    }
    if let Some(link) = &alert.link {
        lines.push(format!("<{link}|Open in Partner Center>"));
    }
    json!({
        "text": format!("{}: {}", title(alert), alert.message),
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": lines.join("\n")}}]
    })
}

fn teams(alert: &Alert) -> Value {
    let facts: Vec<Value> = facts(alert)
        .into_iter()
        .map(|(k, v)| json!({"title": k, "value": v}))
        .collect();
    let mut body = vec![
        json!({"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": title(alert), "wrap": true}),
        json!({"type": "TextBlock", "text": alert.message, "wrap": true}),
    ];
    if !facts.is_empty() {
        body.push(json!({"type": "FactSet", "facts": facts}));
    }
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    });
    if let Some(link) = &alert.link {
        card["actions"] =
            json!([{"type": "Action.OpenUrl", "title": "Open in Partner Center", "url": link}]);
    }
    json!({
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            id: "referral_expiring:r1:24h".into(),
            kind: "referral_expiring".into(),
            severity: "critical".into(),
            referral_id: Some("r1".into()),
            customer: Some("Fabrikam Inc".into()),
            deadline: Some("2026-11-15T00:00:00Z".into()),
            threshold: Some("24h".into()),
            remaining_hours: Some(20.5),
            message: "Referral for Fabrikam Inc expires in 20.5 hours unless accepted or declined (deadline 2026-11-15 00:00 UTC).".into(),
            link: Some("https://partner.microsoft.com/dashboard/referrals/v2/leads/r1/details".into()),
            created_at: "2026-11-14T03:30:00Z".into(),
        }
    }

    #[test]
    fn json_golden() {
        assert_eq!(
            render(AlertFormat::Json, &alert()),
            json!({
                "id": "referral_expiring:r1:24h", "kind": "referral_expiring", "severity": "critical",
                "referral_id": "r1", "customer": "Fabrikam Inc", "deadline": "2026-11-15T00:00:00Z",
                "threshold": "24h", "remaining_hours": 20.5,
                "message": "Referral for Fabrikam Inc expires in 20.5 hours unless accepted or declined (deadline 2026-11-15 00:00 UTC).",
                "link": "https://partner.microsoft.com/dashboard/referrals/v2/leads/r1/details",
                "created_at": "2026-11-14T03:30:00Z"
            })
        );
    }

    #[test]
    fn slack_golden() {
        assert_eq!(
            render(AlertFormat::Slack, &alert()),
            json!({
                "text": "🔴 Co-sell referral expiring: Referral for Fabrikam Inc expires in 20.5 hours unless accepted or declined (deadline 2026-11-15 00:00 UTC).",
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text":
                    "*🔴 Co-sell referral expiring*\nReferral for Fabrikam Inc expires in 20.5 hours unless accepted or declined (deadline 2026-11-15 00:00 UTC).\n*Customer:* Fabrikam Inc\n*Time left:* 20.5 hours\n*Deadline:* 2026-11-15T00:00:00Z\n*Referral:* r1\n<https://partner.microsoft.com/dashboard/referrals/v2/leads/r1/details|Open in Partner Center>"}}]
            })
        );
    }

    #[test]
    fn teams_golden() {
        assert_eq!(
            render(AlertFormat::Teams, &alert()),
            json!({
                "type": "message",
                "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard", "version": "1.4",
                    "body": [
                        {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": "🔴 Co-sell referral expiring", "wrap": true},
                        {"type": "TextBlock", "text": "Referral for Fabrikam Inc expires in 20.5 hours unless accepted or declined (deadline 2026-11-15 00:00 UTC).", "wrap": true},
                        {"type": "FactSet", "facts": [
                            {"title": "Customer", "value": "Fabrikam Inc"},
                            {"title": "Time left", "value": "20.5 hours"},
                            {"title": "Deadline", "value": "2026-11-15T00:00:00Z"},
                            {"title": "Referral", "value": "r1"}
                        ]}
                    ],
                    "actions": [{"type": "Action.OpenUrl", "title": "Open in Partner Center",
                                 "url": "https://partner.microsoft.com/dashboard/referrals/v2/leads/r1/details"}]
                }}]
            })
        );
    }
}
