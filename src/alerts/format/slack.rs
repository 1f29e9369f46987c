//! Slack: an incoming-webhook message (text plus blocks), for one alert and for a digest. Our
//! own text is escaped as Slack asks (`&`, `<`, `>`); outside text is also [`defang`]ed and its
//! mrkdwn markers (`*`, `_`, `~`, `` ` ``) replaced by look-alikes, so it can carry no link, no
//! mention (`<!channel>`, `<@U…>`, `@here`) and no formatting.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{defang, facts, left_phrase, link_target, sentence, title, Fact, Piece};
use crate::alerts::digest::{Digest, LIST_COMMAND};
use crate::alerts::Alert;
use crate::outside::Outside;
use crate::timefmt::human;

/// Slack's control characters in text: without this `AT&T <Retail>` reads as a broken link.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Outside text as inert Slack text.
fn outside(text: &Outside) -> String {
    let plain: String = defang(text)
        .chars()
        .map(|c| match c {
            '*' => '\u{2217}',
            '_' => '\u{FF3F}',
            '~' => '\u{223C}',
            '`' => '\u{02CB}',
            c => c,
        })
        .collect();
    escape(&plain)
}

fn pieces(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Ours(t) => escape(t),
            Piece::Outside(t) => outside(t),
        })
        .collect()
}

/// A date Slack shows in the reader's local time; the fallback is for clients that cannot.
fn local_time(d: DateTime<Utc>) -> String {
    format!(
        "<!date^{}^{{date_short_pretty}} {{time}}|{}>",
        d.timestamp(),
        human(d)
    )
}

/// A command in a code span: a backtick in it would end the span.
fn code(command: &str) -> String {
    format!("`{}`", escape(&command.replace('`', "'")))
}

pub(super) fn alert(alert: &Alert) -> Value {
    let said = pieces(&sentence(alert));
    let mut lines = vec![format!("*{}*", escape(&title(alert))), said.clone()];
    for (k, v) in facts(alert) {
        let value = match v {
            Fact::Text(t) => escape(&t),
            Fact::Outside(t) => outside(&t),
            Fact::Deadline(d) => local_time(d),
            Fact::Code(c) => code(&c),
        };
        lines.push(format!("*{k}:* {value}"));
    }
    if let Some(link) = &alert.link {
        lines.push(format!(
            "<{}|{}>",
            escape(&link_target(link)),
            super::link_label(alert)
        ));
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
        "text": format!("{}: {said}", escape(&title(alert))),
        "blocks": blocks
    })
}

pub(super) fn digest(digest: &Digest, now: DateTime<Utc>) -> Value {
    let headline = escape(&digest.headline());
    let mut lines = vec![format!("*{headline}*")];
    for (what, n) in &digest.counts {
        lines.push(format!("• {n} × {}", escape(what)));
    }
    if !digest.nearest.is_empty() {
        lines.push(format!("*Nearest {} deadlines:*", digest.nearest.len()));
    }
    for n in &digest.nearest {
        let when = format!(
            "{} ({})",
            local_time(n.deadline),
            left_phrase(n.deadline - now)
        );
        let what = match &n.link {
            Some(link) => format!("<{}|{}>", escape(&link_target(link)), outside(&n.what)),
            None => outside(&n.what),
        };
        lines.push(format!("• {what}: {when}"));
    }
    lines.extend(digest.rules.as_deref().map(escape));
    if let Some(inbox) = &digest.inbox {
        lines.push(format!(
            "Answer them together: <{}|the inbox>",
            escape(&link_target(inbox))
        ));
    }
    lines.push(format!("The rest: {}", code(LIST_COMMAND)));
    json!({
        "text": headline,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": lines.join("\n")}}]
    })
}
