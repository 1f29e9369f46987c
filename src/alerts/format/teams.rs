//! Teams: a message carrying an Adaptive Card, as Teams workflow webhooks take, for one alert
//! and for a digest. A `TextBlock` and a `FactSet` render a markdown subset (`[text](url)` is a
//! link, `**`/`_` format) and `{{DATE()}}`/`{{TIME()}}` functions: outside text is [`defang`]ed
//! and those markers replaced by look-alikes, so it can carry no link, no mention (`<at>`), no
//! formatting and no function.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{defang, facts, left_phrase, link_target, sentence, title, Fact, Piece};
use crate::alerts::digest::{Digest, LIST_COMMAND};
use crate::alerts::Alert;
use crate::outside::Outside;

/// Outside text as inert card text.
fn outside(text: &Outside) -> String {
    defang(text)
        .chars()
        .map(|c| match c {
            '[' => '\u{FF3B}',
            ']' => '\u{FF3D}',
            '*' => '\u{2217}',
            '_' => '\u{FF3F}',
            '<' => '\u{2039}',
            '>' => '\u{203A}',
            '{' => '\u{FF5B}',
            '}' => '\u{FF5D}',
            '`' => '\u{02CB}',
            c => c,
        })
        .collect()
}

fn pieces(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Ours(t) => t.clone(),
            Piece::Outside(t) => outside(t),
        })
        .collect()
}

/// A date Adaptive Cards format in the reader's locale and time zone.
fn local_time(d: DateTime<Utc>) -> String {
    let at = d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!("{{{{DATE({at}, SHORT)}}}} {{{{TIME({at})}}}}")
}

fn message(card_body: Vec<Value>, actions: Vec<Value>) -> Value {
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": card_body,
    });
    if !actions.is_empty() {
        card["actions"] = json!(actions);
    }
    json!({
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}]
    })
}

fn heading(text: &str) -> Value {
    json!({"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": text, "wrap": true})
}

pub(super) fn alert(alert: &Alert) -> Value {
    let facts: Vec<Value> = facts(alert)
        .into_iter()
        .map(|(k, v)| {
            let value = match v {
                Fact::Text(t) => t,
                Fact::Outside(t) => outside(&t),
                Fact::Deadline(d) => local_time(d),
                Fact::Code(c) => outside(&Outside::new(c)),
            };
            json!({"title": k, "value": value})
        })
        .collect();
    let mut body = vec![
        heading(&title(alert)),
        json!({"type": "TextBlock", "text": pieces(&sentence(alert)), "wrap": true}),
    ];
    if !facts.is_empty() {
        body.push(json!({"type": "FactSet", "facts": facts}));
    }
    let mut actions = Vec::new();
    if let Some(url) = &alert.action_url {
        actions.push(json!({"type": "Action.OpenUrl", "title": "Accept…", "url": url}));
        actions.push(json!({"type": "Action.OpenUrl", "title": "Decline…", "url": url}));
    }
    if let Some(link) = &alert.link {
        actions.push(
            json!({"type": "Action.OpenUrl", "title": super::link_label(alert), "url": link}),
        );
    }
    message(body, actions)
}

pub(super) fn digest(digest: &Digest, now: DateTime<Utc>) -> Value {
    let counts: Vec<Value> = digest
        .counts
        .iter()
        .map(|(what, n)| json!({"title": n.to_string(), "value": what}))
        .collect();
    let mut body = vec![
        heading(&digest.headline()),
        json!({"type": "FactSet", "facts": counts}),
    ];
    for n in &digest.nearest {
        let what = match &n.link {
            Some(link) => format!("[{}]({})", outside(&n.what), link_target(link)),
            None => outside(&n.what),
        };
        body.push(json!({
            "type": "TextBlock",
            "wrap": true,
            "text": format!("{what}: {} ({})", local_time(n.deadline), left_phrase(n.deadline - now)),
        }));
    }
    if let Some(rules) = &digest.rules {
        body.push(json!({"type": "TextBlock", "wrap": true, "text": rules}));
    }
    if let Some(inbox) = &digest.inbox {
        let text = format!("Answer them together: [the inbox]({})", link_target(inbox));
        body.push(json!({"type": "TextBlock", "wrap": true, "text": text}));
    }
    body.push(
        json!({"type": "TextBlock", "wrap": true, "text": format!("The rest: {LIST_COMMAND}")}),
    );
    message(body, Vec::new())
}
