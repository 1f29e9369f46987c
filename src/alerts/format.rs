//! How each webhook format renders an alert: `json` is the alert itself; `slack` is an
//! incoming-webhook message (text plus blocks, every interpolated text escaped as Slack asks:
//! `&`, `<`, `>`); `teams` is a message carrying an Adaptive Card, as Teams workflow webhooks
//! take. Both human formats show the referral, customer, deal value, time left, the deadline in
//! each reader's own local time (Slack `<!date^…>`, Adaptive Card `{{DATE()}}`/`{{TIME()}}`),
//! the link to the referral and the command that shows it.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::Alert;
use crate::config::AlertFormat;
use crate::timefmt::{human, time_left};

pub(crate) fn render(format: AlertFormat, alert: &Alert) -> Value {
    match format {
        AlertFormat::Json => serde_json::to_value(alert).unwrap_or(Value::Null),
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
        "sync_recovered" => "cosell-sync recovered",
        "sync_unhealthy" => "cosell-sync needs attention",
        "action_failed" => "A sync write failed",
        "conflict" => "Sync conflict needs a decision",
        "test" => "cosell-sync test alert",
        other => other,
    };
    format!("{icon} {what}")
}

/// What a fact's value is: text, or the deadline each format renders in the reader's time.
enum Fact {
    Text(String),
    Deadline(DateTime<Utc>),
    Code(String),
}

fn facts(alert: &Alert) -> Vec<(&'static str, Fact)> {
    let mut facts = Vec::new();
    if let Some(n) = &alert.referral_name {
        facts.push(("Referral", Fact::Text(n.clone())));
    }
    if let Some(c) = &alert.customer {
        facts.push(("Customer", Fact::Text(c.clone())));
    }
    if let Some(v) = alert.deal_value {
        facts.push((
            "Deal value",
            Fact::Text(deal(Some(v), alert.currency.as_deref())),
        ));
    }
    let deadline = alert
        .deadline
        .as_deref()
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.with_timezone(&Utc));
    let raised = DateTime::parse_from_rfc3339(&alert.created_at)
        .ok()
        .map(|d| d.with_timezone(&Utc));
    match (deadline, raised, alert.remaining_hours) {
        (Some(d), Some(r), _) => facts.push(("Time left", Fact::Text(time_left(d - r)))),
        (_, _, Some(h)) => facts.push((
            "Time left",
            Fact::Text(time_left(chrono::Duration::minutes(
                (h * 60.0).round() as i64
            ))),
        )),
        _ => {}
    }
    if let Some(d) = deadline {
        facts.push(("Deadline", Fact::Deadline(d)));
    }
    if let Some(r) = &alert.referral_id {
        facts.push(("Referral id", Fact::Text(r.clone())));
    }
    if let Some(c) = &alert.command {
        facts.push(("Details", Fact::Code(c.clone())));
    }
    facts
}

/// Slack's control characters in text: without this `AT&T <Retail>` reads as a broken link.
pub(crate) fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A deal value with its currency (`250000.00 USD`), or `-`.
pub(crate) fn deal(value: Option<f64>, currency: Option<&str>) -> String {
    match (value, currency) {
        (Some(v), Some(c)) => format!("{v:.2} {c}"),
        (Some(v), None) => format!("{v:.2}"),
        (None, _) => "-".into(),
    }
}

fn slack(alert: &Alert) -> Value {
    let mut lines = vec![format!("*{}*", title(alert)), slack_escape(&alert.message)];
    for (k, v) in facts(alert) {
        let value = match v {
            Fact::Text(t) => slack_escape(&t),
            // Slack shows the reader's local time; the fallback is for clients that cannot.
            Fact::Deadline(d) => format!(
                "<!date^{}^{{date_short_pretty}} {{time}}|{}>",
                d.timestamp(),
                human(d)
            ),
            Fact::Code(c) => format!("`{}`", slack_escape(&c)),
        };
        lines.push(format!("*{k}:* {value}"));
    }
    if let Some(link) = &alert.link {
        lines.push(format!("<{}|Open in Partner Center>", slack_escape(link)));
    }
    let mut blocks =
        vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": lines.join("\n")}})];
    if let Some(url) = &alert.action_url {
        // Plain URL buttons: they open the action page; no Slack app to install.
        let button = |text: &str, id: &str, style: &str| {
            json!({"type": "button", "text": {"type": "plain_text", "text": text},
                   "url": url, "action_id": id, "style": style})
        };
        blocks.push(json!({"type": "actions", "elements": [
            button("Accept…", "cosell_accept", "primary"),
            button("Decline…", "cosell_decline", "danger"),
        ]}));
    }
    json!({
        "text": slack_escape(&format!("{}: {}", title(alert), alert.message)),
        "blocks": blocks
    })
}

fn teams(alert: &Alert) -> Value {
    let facts: Vec<Value> = facts(alert)
        .into_iter()
        .map(|(k, v)| {
            let value = match v {
                Fact::Text(t) => t,
                // Adaptive Cards format these in the reader's locale and time zone.
                Fact::Deadline(d) => {
                    let at = d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    format!("{{{{DATE({at}, SHORT)}}}} {{{{TIME({at})}}}}")
                }
                Fact::Code(c) => c,
            };
            json!({"title": k, "value": value})
        })
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
    let mut actions = Vec::new();
    if let Some(url) = &alert.action_url {
        actions.push(json!({"type": "Action.OpenUrl", "title": "Accept…", "url": url}));
        actions.push(json!({"type": "Action.OpenUrl", "title": "Decline…", "url": url}));
    }
    if let Some(link) = &alert.link {
        actions.push(
            json!({"type": "Action.OpenUrl", "title": "Open in Partner Center", "url": link}),
        );
    }
    if !actions.is_empty() {
        card["actions"] = json!(actions);
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
            referral_name: Some("Contoso <Retail> & POS".into()),
            customer: Some("AT&T <Retail> *bold*".into()),
            deal_value: Some(250000.0),
            currency: Some("USD".into()),
            deadline: Some("2026-11-15T00:00:00Z".into()),
            threshold: Some("24h".into()),
            remaining_hours: Some(20.5),
            message: "Referral \"Contoso <Retail> & POS\" for AT&T <Retail> *bold* expires in 20 h 30 min unless accepted or declined (deadline 2026-11-15 00:00 UTC).".into(),
            link: Some("https://partner.microsoft.com/dashboard/referrals/v2/leads/r1/details".into()),
            command: Some("cosell-sync status --referral r1".into()),
            created_at: "2026-11-14T03:30:00Z".into(),
            action_url: None,
            rule: None,
            rule_decision: None,
            rule_mode: None,
        }
    }

    #[test]
    fn json_golden() {
        assert_eq!(
            render(AlertFormat::Json, &alert()),
            json!({
                "id": "referral_expiring:r1:24h", "kind": "referral_expiring", "severity": "critical",
                "referral_id": "r1", "referral_name": "Contoso <Retail> & POS",
                "customer": "AT&T <Retail> *bold*", "deal_value": 250000.0, "currency": "USD",
                "deadline": "2026-11-15T00:00:00Z",
                "threshold": "24h", "remaining_hours": 20.5,
                "message": "Referral \"Contoso <Retail> & POS\" for AT&T <Retail> *bold* expires in 20 h 30 min unless accepted or declined (deadline 2026-11-15 00:00 UTC).",
                "link": "https://partner.microsoft.com/dashboard/referrals/v2/leads/r1/details",
                "command": "cosell-sync status --referral r1",
                "created_at": "2026-11-14T03:30:00Z"
            })
        );
    }

    #[test]
    fn slack_golden_escapes_text_and_shows_local_time() {
        assert_eq!(
            render(AlertFormat::Slack, &alert()),
            json!({
                "text": "🔴 Co-sell referral expiring: Referral \"Contoso &lt;Retail&gt; &amp; POS\" for AT&amp;T &lt;Retail&gt; *bold* expires in 20 h 30 min unless accepted or declined (deadline 2026-11-15 00:00 UTC).",
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text":
                    "*🔴 Co-sell referral expiring*\nReferral \"Contoso &lt;Retail&gt; &amp; POS\" for AT&amp;T &lt;Retail&gt; *bold* expires in 20 h 30 min unless accepted or declined (deadline 2026-11-15 00:00 UTC).\n*Referral:* Contoso &lt;Retail&gt; &amp; POS\n*Customer:* AT&amp;T &lt;Retail&gt; *bold*\n*Deal value:* 250000.00 USD\n*Time left:* 20 h 30 min\n*Deadline:* <!date^1794700800^{date_short_pretty} {time}|2026-11-15 00:00 UTC>\n*Referral id:* r1\n*Details:* `cosell-sync status --referral r1`\n<https://partner.microsoft.com/dashboard/referrals/v2/leads/r1/details|Open in Partner Center>"}}]
            })
        );
    }

    #[test]
    fn teams_golden_shows_local_time() {
        assert_eq!(
            render(AlertFormat::Teams, &alert()),
            json!({
                "type": "message",
                "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard", "version": "1.4",
                    "body": [
                        {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": "🔴 Co-sell referral expiring", "wrap": true},
                        {"type": "TextBlock", "text": "Referral \"Contoso <Retail> & POS\" for AT&T <Retail> *bold* expires in 20 h 30 min unless accepted or declined (deadline 2026-11-15 00:00 UTC).", "wrap": true},
                        {"type": "FactSet", "facts": [
                            {"title": "Referral", "value": "Contoso <Retail> & POS"},
                            {"title": "Customer", "value": "AT&T <Retail> *bold*"},
                            {"title": "Deal value", "value": "250000.00 USD"},
                            {"title": "Time left", "value": "20 h 30 min"},
                            {"title": "Deadline", "value": "{{DATE(2026-11-15T00:00:00Z, SHORT)}} {{TIME(2026-11-15T00:00:00Z)}}"},
                            {"title": "Referral id", "value": "r1"},
                            {"title": "Details", "value": "cosell-sync status --referral r1"}
                        ]}
                    ],
                    "actions": [{"type": "Action.OpenUrl", "title": "Open in Partner Center",
                                 "url": "https://partner.microsoft.com/dashboard/referrals/v2/leads/r1/details"}]
                }}]
            })
        );
    }

    #[test]
    fn an_action_url_becomes_buttons_and_a_json_field() {
        let mut a = alert();
        a.action_url = Some("https://sync.example.com/act/T0K3N".into());
        assert_eq!(
            render(AlertFormat::Json, &a)["action_url"],
            "https://sync.example.com/act/T0K3N"
        );
        let slack = render(AlertFormat::Slack, &a);
        let buttons = &slack["blocks"][1]["elements"];
        assert_eq!(buttons[0]["text"]["text"], "Accept…");
        assert_eq!(buttons[1]["text"]["text"], "Decline…");
        assert_eq!(buttons[1]["url"], "https://sync.example.com/act/T0K3N");
        let teams = render(AlertFormat::Teams, &a);
        let actions = &teams["attachments"][0]["content"]["actions"];
        assert_eq!(actions[0]["url"], "https://sync.example.com/act/T0K3N");
        assert_eq!(actions[1]["title"], "Decline…");
        assert_eq!(actions[2]["title"], "Open in Partner Center");
        assert!(render(AlertFormat::Json, &alert())
            .get("action_url")
            .is_none());
    }

    #[test]
    fn recovery_has_its_own_title() {
        let mut a = alert();
        a.kind = "sync_recovered".into();
        a.severity = "info".into();
        assert_eq!(title(&a), "🟢 cosell-sync recovered");
    }

    /// Every string of up to 3 characters over Slack's control characters and their
    /// neighbours: no raw `<`, `>` or bare `&` reaches Slack text outside the links and
    /// dates the formatter itself writes.
    #[test]
    fn slack_text_never_carries_raw_control_characters() {
        let alphabet = ['&', '<', '>', 'a', ';', '|', '!', '*', ' '];
        let mut inputs = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = inputs
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            inputs.extend(longer);
        }
        inputs.dedup();
        for customer in &inputs {
            let mut a = alert();
            a.customer = Some(customer.clone());
            a.referral_name = Some(customer.chars().rev().collect());
            a.message = format!("Referral for {customer}");
            a.command = Some(format!("cosell-sync status --referral {customer}"));
            a.link = None;
            a.deadline = None;
            let v = render(AlertFormat::Slack, &a);
            for text in [
                v["text"].as_str().unwrap(),
                v["blocks"][0]["text"]["text"].as_str().unwrap(),
            ] {
                assert!(!text.contains('<') && !text.contains('>'), "{text}");
                for (i, _) in text.match_indices('&') {
                    let rest = &text[i..];
                    assert!(
                        ["&amp;", "&lt;", "&gt;"]
                            .iter()
                            .any(|e| rest.starts_with(e)),
                        "{text}"
                    );
                }
            }
        }
    }
}
