//! How each webhook format renders an alert and a digest: `json` is the alert itself (its
//! reader's business, like the command sink's); `slack` ([`slack`]) is an incoming-webhook
//! message; `teams` ([`teams`]) a message carrying an Adaptive Card, as Teams workflow webhooks
//! take. Each chat format keeps its single alert and its digest in its own module. Both show the
//! referral, customer, deal value, time left, the deadline in each reader's own local time, the
//! link to the referral and the command that shows it.
//!
//! Text set outside the company ([`Outside`]: names, customers, remote error texts) reaches a
//! chat format only as [`Piece::Outside`] or [`Fact::Outside`]: [`defang`] removes what can
//! hide or reorder text and breaks what a chat client would turn into a link or a mention, then
//! the format's own escaper neutralises its markup. The product's own words ([`Piece::Ours`])
//! are written as they are.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::digest::Digest;
use super::Alert;
use crate::config::AlertFormat;
use crate::outside::Outside;
use crate::timefmt::time_left;

mod slack;
mod teams;

pub(crate) fn render(format: AlertFormat, alert: &Alert) -> Value {
    match format {
        AlertFormat::Json => serde_json::to_value(alert).unwrap_or(Value::Null),
        AlertFormat::Slack => slack::alert(alert),
        AlertFormat::Teams => teams::alert(alert),
    }
}

/// A digest as `format` shows it (`now` for the time left).
pub(crate) fn render_digest(format: AlertFormat, digest: &Digest, now: DateTime<Utc>) -> Value {
    match format {
        AlertFormat::Slack => slack::digest(digest, now),
        AlertFormat::Teams => teams::digest(digest, now),
        // Never sent: JSON sinks get one call per alert.
        AlertFormat::Json => serde_json::json!({"kind": "digest", "total": digest.total}),
    }
}

fn title(alert: &Alert) -> String {
    let icon = match alert.severity.as_str() {
        "critical" => "🔴",
        "warning" => "🟠",
        _ => "🟢",
    };
    let what = match (alert.kind.as_str(), is_aws(alert)) {
        ("referral_expiring", true) => "AWS co-sell invitation expiring",
        ("referral_expired", true) => "AWS co-sell invitation expired",
        ("invitation_vanished", _) => "AWS co-sell invitation vanished",
        (kind, _) => match kind {
            "referral_expiring" => "Co-sell referral expiring",
            "referral_expired" => "Co-sell referral expired",
            "sync_recovered" => "cosell-sync recovered",
            "sync_unhealthy" => "cosell-sync needs attention",
            "action_failed" => "A sync write failed",
            "conflict" => "Sync conflict needs a decision",
            "test" => "cosell-sync test alert",
            other => other,
        },
    };
    format!("{icon} {what}")
}

/// An alert about an AWS engagement invitation (spec §8), not a Partner Center referral.
fn is_aws(alert: &Alert) -> bool {
    alert.source.as_deref() == Some(crate::store::invitations::AWS)
}

/// The label of the alert's link: the console it opens.
pub(super) fn link_label(alert: &Alert) -> &'static str {
    match is_aws(alert) {
        true => "Open in AWS Partner Central",
        false => "Open in Partner Center",
    }
}

/// A part of a sentence: the product's words, or text set outside the company.
enum Piece {
    Ours(String),
    Outside(Outside),
}

/// The alert's sentence for people. An expiry alert is built from its fields, so the product's
/// words stay words; any other alert's message may carry a remote error text, so all of it is
/// outside text.
fn sentence(alert: &Alert) -> Vec<Piece> {
    let expiry = matches!(
        alert.kind.as_str(),
        "referral_expiring" | "referral_expired"
    );
    if !expiry || alert.referral_id.is_none() {
        return vec![Piece::Outside(Outside::new(alert.message.as_str()))];
    }
    let mut pieces = Vec::new();
    let (noun, archived) = match is_aws(alert) {
        true => ("AWS invitation", "AWS marks it EXPIRED"),
        false => ("Referral", "Microsoft archives it as Expired"),
    };
    match &alert.referral_name {
        Some(name) => {
            pieces.push(Piece::Ours(format!("{noun} \"")));
            pieces.push(Piece::Outside(name.clone()));
            pieces.push(Piece::Ours("\" for ".into()));
        }
        None => pieces.push(Piece::Ours(format!("{noun} for "))),
    }
    match &alert.customer {
        Some(c) => pieces.push(Piece::Outside(c.clone())),
        None => pieces.push(Piece::Ours("an unknown customer".into())),
    }
    pieces.push(Piece::Ours(match (alert.kind.as_str(), left(alert)) {
        ("referral_expired", _) => {
            format!(" passed its response deadline unanswered; {archived}.")
        }
        (_, Some(left)) => format!(" expires in {left} unless accepted or declined."),
        (_, None) => " expires soon unless accepted or declined.".into(),
    }));
    pieces
}

/// What a fact's value is: our text, outside text, the deadline each format renders in the
/// reader's time, or a command.
enum Fact {
    Text(String),
    Outside(Outside),
    Deadline(DateTime<Utc>),
    Code(String),
}

fn deadline_of(alert: &Alert) -> Option<DateTime<Utc>> {
    alert
        .deadline
        .as_deref()
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.with_timezone(&Utc))
}

/// The time left when the alert was raised (`2 d 12 h`), if it is about a deadline.
fn left(alert: &Alert) -> Option<String> {
    let raised = DateTime::parse_from_rfc3339(&alert.created_at)
        .ok()
        .map(|d| d.with_timezone(&Utc));
    match (deadline_of(alert), raised, alert.remaining_hours) {
        (Some(d), Some(r), _) => Some(time_left(d - r)),
        (_, _, Some(h)) => Some(time_left(chrono::Duration::minutes(
            (h * 60.0).round() as i64
        ))),
        _ => None,
    }
}

fn facts(alert: &Alert) -> Vec<(&'static str, Fact)> {
    let mut facts = Vec::new();
    let (noun, id) = match is_aws(alert) {
        true => ("AWS invitation", "Invitation id"),
        false => ("Referral", "Referral id"),
    };
    if let Some(n) = &alert.referral_name {
        facts.push((noun, Fact::Outside(n.clone())));
    }
    if let Some(c) = &alert.customer {
        facts.push(("Customer", Fact::Outside(c.clone())));
    }
    if let Some(v) = alert.deal_value {
        // The currency code comes from Partner Center too.
        let value = deal(Some(v), alert.currency.as_deref());
        facts.push(("Deal value", Fact::Outside(Outside::new(value))));
    }
    if let Some(left) = left(alert) {
        facts.push(("Time left", Fact::Text(left)));
    }
    if let Some(d) = deadline_of(alert) {
        facts.push(("Deadline", Fact::Deadline(d)));
    }
    if let Some(r) = &alert.referral_id {
        facts.push((id, Fact::Outside(Outside::new(r.as_str()))));
    }
    if let Some(c) = &alert.command {
        facts.push(("Details", Fact::Code(c.clone())));
    }
    facts
}

/// A deal value with its currency (`250000.00 USD`), or `-`.
pub(crate) fn deal(value: Option<f64>, currency: Option<&str>) -> String {
    match (value, currency) {
        (Some(v), Some(c)) => format!("{v:.2} {c}"),
        (Some(v), None) => format!("{v:.2}"),
        (None, _) => "-".into(),
    }
}

/// `3 h left`, or `expired` (a digest line's time left).
fn left_phrase(remaining: chrono::Duration) -> String {
    match time_left(remaining) {
        t if t == "expired" => t,
        t => format!("{t} left"),
    }
}

/// Outside text made inert for any chat client, before the format's own escaping: control
/// characters become a space, invisible ones (zero-width, bidirectional overrides, byte-order
/// marks) go, and what a client would turn into a link or a mention is broken with a look-alike:
/// `@` becomes `＠` (no `@here`, `@channel`, no e-mail link), `://` becomes `∶//` and a dot
/// before a letter becomes `․` (no bare URL or domain is linkified).
fn defang(text: &Outside) -> String {
    let mut clean: Vec<char> = Vec::with_capacity(text.unescaped().len());
    for c in text.unescaped().chars() {
        if c.is_control() {
            if clean.last() != Some(&' ') {
                clean.push(' ');
            }
        } else if !is_invisible(c) {
            clean.push(c);
        }
    }
    let mut out = String::with_capacity(clean.len());
    for (i, &c) in clean.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| clean[j]);
        let next = clean.get(i + 1).copied();
        match c {
            '@' | '\u{FE6B}' => out.push('\u{FF20}'),
            ':' if next == Some('/') => out.push('\u{2236}'),
            '.' | '\u{3002}' | '\u{FF0E}' | '\u{FF61}'
                if prev.is_some_and(char::is_alphanumeric)
                    && next.is_some_and(char::is_alphabetic) =>
            {
                out.push('\u{2024}')
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that show nothing yet change what is read: zero-width ones, joiners, the
/// bidirectional marks, embeddings, overrides and isolates, the byte-order mark, tags.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

/// A URL the product wrote, made safe inside a chat link's markup: anything that could end
/// the link or start another (`)`, `]`, `>`, `|`, spaces, quotes) is percent-encoded.
fn link_target(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for b in url.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/?#@!$&'*+,;=%".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            source: Some("microsoft".into()),
        }
    }

    /// An AWS invitation's alert reads as one in every chat format: the title, the sentence,
    /// the facts and the link's label say AWS; the JSON says `source: aws`.
    #[test]
    fn an_aws_invitation_alert_says_aws() {
        let mut a = alert();
        a.id = "referral_expiring:engi-0000000000001:24h".into();
        a.referral_id = Some("engi-0000000000001".into());
        a.source = Some("aws".into());
        a.link = Some("https://partnercentral.example/invitations/engi-0000000000001".into());
        let json = render(AlertFormat::Json, &a);
        assert_eq!(json["source"], "aws");
        assert_eq!(json["referral_id"], "engi-0000000000001");
        let slack = render(AlertFormat::Slack, &a).to_string();
        assert!(slack.contains("AWS co-sell invitation expiring"), "{slack}");
        assert!(slack.contains("AWS invitation \\\"Contoso"), "{slack}");
        assert!(slack.contains("Invitation id"), "{slack}");
        assert!(slack.contains("Open in AWS Partner Central"), "{slack}");
        assert!(!slack.contains("Partner Center"), "{slack}");
        let teams = render(AlertFormat::Teams, &a).to_string();
        assert!(teams.contains("AWS co-sell invitation expiring"), "{teams}");
        assert!(teams.contains("Open in AWS Partner Central"), "{teams}");
        a.kind = "referral_expired".into();
        let slack = render(AlertFormat::Slack, &a).to_string();
        assert!(slack.contains("AWS marks it EXPIRED"), "{slack}");
        assert!(!slack.contains("Microsoft"), "{slack}");
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
                "created_at": "2026-11-14T03:30:00Z",
                "source": "microsoft"
            })
        );
    }

    #[test]
    fn slack_golden_escapes_text_neutralises_outside_markup_and_shows_local_time() {
        assert_eq!(
            render(AlertFormat::Slack, &alert()),
            json!({
                "text": "🔴 Co-sell referral expiring: Referral \"Contoso &lt;Retail&gt; &amp; POS\" for AT&amp;T &lt;Retail&gt; ∗bold∗ expires in 20 h 30 min unless accepted or declined.",
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text":
                    "*🔴 Co-sell referral expiring*\nReferral \"Contoso &lt;Retail&gt; &amp; POS\" for AT&amp;T &lt;Retail&gt; ∗bold∗ expires in 20 h 30 min unless accepted or declined.\n*Referral:* Contoso &lt;Retail&gt; &amp; POS\n*Customer:* AT&amp;T &lt;Retail&gt; ∗bold∗\n*Deal value:* 250000.00 USD\n*Time left:* 20 h 30 min\n*Deadline:* <!date^1794700800^{date_short_pretty} {time}|2026-11-15 00:00 UTC>\n*Referral id:* r1\n*Details:* `cosell-sync status --referral r1`\n<https://partner.microsoft.com/dashboard/referrals/v2/leads/r1/details|Open in Partner Center>"}}]
            })
        );
    }

    #[test]
    fn teams_golden_neutralises_outside_markup_and_shows_local_time() {
        assert_eq!(
            render(AlertFormat::Teams, &alert()),
            json!({
                "type": "message",
                "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard", "version": "1.4",
                    "body": [
                        {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": "🔴 Co-sell referral expiring", "wrap": true},
                        {"type": "TextBlock", "text": "Referral \"Contoso ‹Retail› & POS\" for AT&T ‹Retail› ∗bold∗ expires in 20 h 30 min unless accepted or declined.", "wrap": true},
                        {"type": "FactSet", "facts": [
                            {"title": "Referral", "value": "Contoso ‹Retail› & POS"},
                            {"title": "Customer", "value": "AT&T ‹Retail› ∗bold∗"},
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
            a.customer = Some(customer.as_str().into());
            a.referral_name = Some(customer.chars().rev().collect::<String>().into());
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

    /// What outside text tries in chat: links (markdown, Slack, bare), mentions, markup, card
    /// functions, invisible and control characters, right-to-left overrides.
    const HOSTILE: &[&str] = &[
        "[Click to accept](https://evil.example/phish)",
        "<!channel>",
        "<!here|here>",
        "<@U0123ABC>",
        "@here",
        "@channel",
        "<at>Ana</at>",
        "<https://evil.example|Accept>",
        "**bold**",
        "*b*",
        "_i_",
        "~s~",
        "`code`",
        "{{DATE(2026-01-01T00:00:00Z)}}",
        "${secret}",
        "https://evil.example",
        "www.evil.com",
        "evil。com",
        "ana@evil.example",
        "](",
        "[",
        "&lt;",
        "&amp;",
        "&",
        "<",
        ">",
        "|",
        "\\",
        "\u{202E}",
        "\u{2066}",
        "\u{200B}",
        "\u{FEFF}",
        "\n",
        "\r\n",
        "\t",
        "\u{0}",
        "\u{7}",
        "\u{85}",
        "Contoso",
        "Retail",
        " ",
        ".",
        ":",
        "/",
    ];

    fn hostile(rng: &mut fastrand::Rng) -> String {
        let mut text = String::new();
        for _ in 0..rng.usize(1..6) {
            if rng.u8(..4) == 0 {
                text.push_str(&crate::config::hostile_text(rng, 4));
            } else {
                text.push_str(HOSTILE[rng.usize(..HOSTILE.len())]);
            }
        }
        text
    }

    /// Every string a payload carries, joined (what a chat client would read).
    fn strings(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push_str(s);
                out.push('\u{1}');
            }
            Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            Value::Object(o) => o.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }

    /// The marks a link, a mention, markup or a hidden character needs, counted.
    fn marks(format: AlertFormat, v: &Value) -> Vec<usize> {
        let mut text = String::new();
        strings(v, &mut text);
        let chars: Vec<char> = text.chars().collect();
        let special = match format {
            AlertFormat::Slack => "<>*_~`@",
            _ => "[]<>*_`@{}",
        };
        let mut counts: Vec<usize> = special
            .chars()
            .map(|m| chars.iter().filter(|c| **c == m).count())
            .collect();
        counts.push(text.matches("://").count());
        if format == AlertFormat::Teams {
            counts.push(text.matches("](").count());
        }
        counts.push(
            chars
                .windows(3)
                .filter(|w| w[1] == '.' && w[0].is_alphanumeric() && w[2].is_alphabetic())
                .count(),
        );
        counts.push(
            chars
                .iter()
                .filter(|c| (c.is_control() && **c != '\u{1}') || is_invisible(**c))
                .count(),
        );
        counts
    }

    fn with_names(base: &Alert, name: &str, customer: &str, currency: &str) -> Alert {
        let mut a = base.clone();
        a.referral_name = Some(name.into());
        a.customer = Some(customer.into());
        a.currency = Some(currency.into());
        if !a.kind.starts_with("referral_") {
            a.message = format!("Referral r1 cannot become a Google lead: {name}.");
        }
        a
    }

    /// Issue 30: a hostile referral name, customer or currency (or a remote error text in a
    /// message) adds no link, mention, markup, card function or hidden character to any chat
    /// payload, single alert or digest: each payload has exactly the marks it has with the
    /// name `X`. JSON is the alert itself (its reader's business).
    #[test]
    fn generated_hostile_names_add_no_link_mention_or_markup_to_any_chat_payload() {
        let mut rng = fastrand::Rng::with_seed(30);
        let now = DateTime::parse_from_rfc3339("2026-11-14T03:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut kinds = vec![alert()];
        let mut with_action = alert();
        with_action.action_url = Some("https://sync.example.com/act/T0K3N".into());
        kinds.push(with_action);
        let mut expired = alert();
        expired.kind = "referral_expired".into();
        kinds.push(expired);
        kinds.push(Alert::general(
            "forward_blocked:r1:1".into(),
            "forward_blocked",
            "warning",
            String::new(),
            now,
        ));
        for round in 0..400 {
            let (name, customer, currency) =
                (hostile(&mut rng), hostile(&mut rng), hostile(&mut rng));
            for format in [AlertFormat::Slack, AlertFormat::Teams] {
                for base in &kinds {
                    let hostile = render(format, &with_names(base, &name, &customer, &currency));
                    let plain = render(format, &with_names(base, "X", "X", "X"));
                    assert_eq!(
                        marks(format, &hostile),
                        marks(format, &plain),
                        "{format:?} {} {name:?} / {customer:?}:\n{hostile:#}",
                        base.kind
                    );
                }
                let mut alerts: Vec<Alert> = Vec::new();
                for i in 0..12 {
                    let mut a = with_names(&kinds[0], &format!("{name}{i}"), &customer, "X");
                    a.id = format!("referral_expiring:r{i}:24h");
                    a.referral_id = Some(format!("r{i}"));
                    a.link = Some(format!("https://pc.example/leads/r{i}"));
                    alerts.push(a);
                }
                let plain_alerts: Vec<Alert> = alerts
                    .iter()
                    .map(|a| with_names(a, "X", "X", "X"))
                    .collect();
                let digest = Digest::of(&alerts.iter().collect::<Vec<_>>());
                let plain = Digest::of(&plain_alerts.iter().collect::<Vec<_>>());
                let (hostile, plain) = (digest.render(format, now), plain.render(format, now));
                assert_eq!(
                    marks(format, &hostile),
                    marks(format, &plain),
                    "round {round}: {format:?} digest {name:?} / {customer:?}:\n{hostile:#}"
                );
            }
        }
    }

    /// The red-team's repro: a Teams card for a referral named like a link has no link in its
    /// text, and still reads as the name.
    #[test]
    fn a_referral_named_like_a_link_is_no_link_in_a_teams_card() {
        let mut a = alert();
        a.referral_name = Some("[Click to accept](https://evil.example/phish)".into());
        let card = render(AlertFormat::Teams, &a).to_string();
        assert!(!card.contains("[Click"), "{card}");
        assert!(!card.contains("](https://evil"), "{card}");
        assert!(!card.contains("https://evil"), "{card}");
        assert!(card.contains("Click to accept"), "{card}");
    }
}
