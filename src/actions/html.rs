//! Every page the actions server shows (the action page, its outcomes and refusals, the inbox
//! and its results), written with maud's `html!`: plain, server-rendered, no script, readable
//! on a phone and with a screen reader (labels, a heading per part, real buttons). maud
//! escapes every interpolated text; only the fixed style sheet and doctype go in unescaped.

use maud::{html, Markup, PreEscaped};

/// One line of facts: a text, or a link (opened without a Referer: the page URL is a secret).
pub(crate) enum Fact {
    Text(String),
    Link { text: String, href: String },
}

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1b1f24}\
main{max-width:36rem;margin:0 auto;padding:1rem}\
h1{font-size:1.35rem;margin:.5rem 0 1rem}h2{font-size:1.1rem;margin:1.25rem 0 .5rem}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1rem;background:#fff;padding:1rem;border-radius:.5rem;border:1px solid #d0d7de}\
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}\
.urgent{color:#b42318;font-weight:700}\
form{background:#fff;padding:1rem;border-radius:.5rem;border:1px solid #d0d7de;margin-top:1rem}\
label{display:block;font-weight:600;margin:.75rem 0 .25rem}\
select,textarea{width:100%;box-sizing:border-box;font:inherit;padding:.5rem;border:1px solid #8c959f;border-radius:.375rem}\
button{display:block;width:100%;font:inherit;font-weight:700;padding:.8rem;margin-top:.75rem;border-radius:.375rem;border:0;cursor:pointer}\
.accept{background:#1a7f37;color:#fff}.decline{background:#cf222e;color:#fff}\
.outcome{background:#fff;padding:1rem;border-radius:.5rem;border:2px solid #1a7f37}\
.refused{border-color:#cf222e}\
table{width:100%;border-collapse:collapse;background:#fff;font-size:.95rem}\
th,td{text-align:left;padding:.4rem;border-bottom:1px solid #d0d7de;vertical-align:top}\
@media (max-width:40rem){thead{display:none}tr{display:block;border-bottom:2px solid #d0d7de}td{display:block;border:0;padding:.15rem .4rem}}\
button:focus,select:focus,textarea:focus,a:focus{outline:3px solid #0969da;outline-offset:2px}";

/// The frame every page shares: the viewport for phones, a Referer only to ourselves
/// (`same-origin`: the action page's URL is its token, and under `no-referrer` a browser posts
/// our own form with `Origin: null`, which the cross-site check refuses), the style sheet
/// inline (the Content-Security-Policy allows no other).
fn layout(title: &str, body: Markup) -> String {
    html! {
        // maud's DOCTYPE is upper-case and has no line break; the pages keep theirs.
        (PreEscaped("<!doctype html>\n"))
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="same-origin";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { main { (body) } }
        }
        "\n"
    }
    .into_string()
}

fn facts_list(facts: &[(&str, Fact)], urgent: bool) -> Markup {
    html! {
        dl {
            @for (name, fact) in facts {
                dt { (name) }
                dd class=[(urgent && *name == "Time left").then_some("urgent")] {
                    @match fact {
                        Fact::Text(t) => { (t) }
                        Fact::Link { text, href } => {
                            a href=(href) rel="noreferrer noopener" target="_blank" { (text) }
                        }
                    }
                }
            }
        }
    }
}

/// The decline reasons, as both forms offer them (spec §4: each option's value is its text).
fn reason_choice(reasons: &[String]) -> Markup {
    html! {
        label for="reason" { "Reason for declining" }
        select id="reason" name="reason" {
            @for reason in reasons {
                option value=(reason) { (reason) }
            }
        }
    }
}

/// The decision page: the facts, then one form (its contract is fixed in spec §4).
pub(crate) fn form_page(
    facts: &[(&str, Fact)],
    urgent: bool,
    token: &str,
    referral_id: &str,
    reasons: &[String],
) -> String {
    layout(
        "Answer a co-sell referral",
        html! {
            h1 { "Answer this co-sell referral before its deadline" }
            (facts_list(facts, urgent))
            form method="post" {
                input type="hidden" name="token" value=(token);
                input type="hidden" name="referral" value=(referral_id);
                h2 { "Accept" }
                button type="submit" class="accept" name="action" value="accept" { "Accept referral" }
                h2 { "Decline" }
                (reason_choice(reasons))
                label for="note" { "Note (optional; kept in the audit log)" }
                textarea id="note" name="note" rows="2" maxlength="1000" {}
                button type="submit" class="decline" name="action" value="decline" { "Decline referral" }
            }
        },
    )
}

/// An outcome or a refusal: a heading, one sentence, and the facts when there are any.
pub(crate) fn message_page(title: &str, message: &str, facts: &[(&str, Fact)], ok: bool) -> String {
    layout(
        title,
        html! {
            h1 { (title) }
            p class=(if ok { "outcome" } else { "outcome refused" }) role="status" { (message) }
            @if !facts.is_empty() {
                (facts_list(facts, false))
            }
        },
    )
}

/// One inbox row, its texts already worded (the stored ones borrowed).
pub(crate) struct InboxLine<'a> {
    pub(crate) id: &'a str,
    pub(crate) time_left: String,
    pub(crate) customer: &'a str,
    pub(crate) value: String,
    /// `microsoft` or `aws` (an engagement invitation).
    pub(crate) source: &'a str,
    /// What the rules decided, as a sentence.
    pub(crate) rules: String,
    /// The referral's action page.
    pub(crate) link: String,
}

/// An inbox page: who is signed in, the form token, one page of rows and where it stands.
pub(crate) struct InboxView<'a> {
    pub(crate) person: &'a str,
    pub(crate) token: &'a str,
    /// This page and how many there are, counted from 1.
    pub(crate) number: usize,
    pub(crate) pages: usize,
    /// Referrals awaiting an answer, on every page.
    pub(crate) total: usize,
    pub(crate) rows: &'a [InboxLine<'a>],
    pub(crate) reasons: &'a [String],
    /// When the time left was counted.
    pub(crate) as_of: &'a str,
}

/// The inbox (spec §7): one form, a checkbox per row, the reasons and two buttons; on a phone
/// the table's rows become blocks (the style sheet's media query).
pub(crate) fn inbox_page(v: &InboxView) -> String {
    layout(
        "Co-sell inbox",
        html! {
            h1 { "Co-sell inbox" }
            p { (v.total) " referrals await an answer, nearest deadline first. Signed in as " (v.person) "." }
            form method="post" {
                input type="hidden" name="token" value=(v.token);
                table {
                    thead { tr {
                        th {} th { "Time left" } th { "Customer" } th { "Value" } th { "Source" }
                        th { "Rules" } th { "Referral" }
                    } }
                    tbody {
                        @for r in v.rows {
                            tr {
                                td { input type="checkbox" name="referral" value=(r.id) id={ "r-" (r.id) } aria-label={ "Select " (r.customer) }; }
                                td { (r.time_left) }
                                td { label for={ "r-" (r.id) } { (r.customer) } }
                                td { (r.value) }
                                td { (r.source) }
                                td { (r.rules) }
                                td { a href=(r.link) rel="noreferrer noopener" { (r.id) } }
                            }
                        }
                    }
                }
                @if v.rows.is_empty() {
                    p { "Nothing awaits an answer." }
                }
                (reason_choice(v.reasons))
                button type="submit" class="accept" name="action" value="accept" { "Accept checked" }
                button type="submit" class="decline" name="action" value="decline" { "Decline checked" }
            }
            nav { p {
                "Page " (v.number) " of " (v.pages) "."
                @if v.number > 1 {
                    " " a href={ "?page=" (v.number - 1) } { "Previous page" }
                }
                @if v.number < v.pages {
                    " " a href={ "?page=" (v.number + 1) } { "Next page" }
                }
            } }
            p { "Deadlines shown as of " (v.as_of) "." }
        },
    )
}

/// What became of each checked referral: its state word (queued, sent, refused), its id and
/// a detail when there is one.
pub(crate) fn results_page(inbox_path: &str, outcomes: &[(&str, &str, Option<&str>)]) -> String {
    layout(
        "Inbox: results",
        html! {
            h1 { "Answers" }
            ul {
                @for (word, id, detail) in outcomes {
                    li class=(word) {
                        strong { (word) } " " (id)
                        @if let Some(d) = detail { ": " (d) }
                    }
                }
            }
            p { a href=(inbox_path) { "Back to the inbox" } " (reload this page to see queued answers sent)." }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_follows_the_fixed_contract_and_escapes_everything() {
        let facts = [
            ("Customer", Fact::Text("AT&T <Retail> \"x\"".into())),
            (
                "Partner Center",
                Fact::Link {
                    text: "Open".into(),
                    href: "https://p.example/a?b=1&c=\"2\"".into(),
                },
            ),
        ];
        let reasons = vec!["Too <small> & \"odd\"".to_string(), "Other".to_string()];
        let html = form_page(&facts, true, "tok.1.sig", "r-1", &reasons);
        assert_eq!(html.matches("<form method=\"post\">").count(), 1);
        assert!(html.contains("<select id=\"reason\" name=\"reason\">"));
        assert!(html.contains("name=\"action\" value=\"accept\""));
        assert!(html.contains("name=\"action\" value=\"decline\""));
        assert!(html.contains(
            "<option value=\"Too &lt;small&gt; &amp; &quot;odd&quot;\">Too &lt;small&gt; &amp; &quot;odd&quot;</option>"
        ));
        assert!(html.contains("AT&amp;T &lt;Retail&gt; &quot;x&quot;"));
        assert!(html.contains(
            "href=\"https://p.example/a?b=1&amp;c=&quot;2&quot;\" rel=\"noreferrer noopener\""
        ));
        assert!(!html.contains("<script"));
        assert!(html.contains("name=\"viewport\""));
    }
}

#[cfg(test)]
mod generated {
    use super::*;

    /// What HTML gives a meaning to; `hostile_text` has none of it, so it is mixed in.
    const MARKUP: &[&str] = &[
        "<",
        ">",
        "\"",
        "'",
        "&",
        "&amp;",
        "&#39;",
        "<script>alert(1)</script>",
        "\"><img src=x onerror=alert(1)>",
        "</textarea>",
        "</title>",
        "</main>",
        "<!--",
        "&lt;",
    ];

    fn hostile(rng: &mut fastrand::Rng) -> String {
        (0..rng.usize(0..6))
            .map(|_| match rng.bool() {
                true => MARKUP[rng.usize(..MARKUP.len())].to_string(),
                false => crate::config::hostile_text(rng, 6),
            })
            .collect()
    }

    /// Every page, its texts (names, customers, reasons, actors, ids, links) taken from `t`.
    fn pages(t: &[String]) -> Vec<String> {
        let facts = [
            ("Customer", Fact::Text(t[0].clone())),
            ("Time left", Fact::Text(t[1].clone())),
            (
                "Partner Center",
                Fact::Link {
                    text: t[2].clone(),
                    href: t[3].clone(),
                },
            ),
            ("Answered by", Fact::Text(t[4].clone())),
        ];
        let reasons = [t[7].clone(), t[8].clone()];
        let line = |id| InboxLine {
            id,
            time_left: t[1].clone(),
            customer: &t[0],
            value: t[13].clone(),
            source: "aws",
            rules: t[14].clone(),
            link: t[3].clone(),
        };
        let rows = [line(t[6].as_str()), line(t[12].as_str())];
        let inbox = InboxView {
            person: &t[11],
            token: &t[5],
            number: 2,
            pages: 3,
            total: 250,
            rows: &rows,
            reasons: &reasons,
            as_of: &t[15],
        };
        let outcomes = [
            ("sent", t[6].as_str(), None),
            ("refused", t[12].as_str(), Some(t[14].as_str())),
        ];
        vec![
            form_page(&facts, true, &t[5], &t[6], &reasons),
            message_page(&t[9], &t[10], &facts, false),
            inbox_page(&inbox),
            results_page(&t[16], &outcomes),
        ]
    }

    /// Hostile texts change no page's markup: each page has exactly the `<`, `>` and `"` it
    /// has with those characters taken out of its texts, and every `&` starts an entity.
    #[test]
    fn hostile_texts_reach_every_page_escaped() {
        let mut rng = fastrand::Rng::with_seed(0x27_e5ca_9e00);
        for _ in 0..2_000 {
            let texts: Vec<String> = (0..17).map(|_| hostile(&mut rng)).collect();
            let tame: Vec<String> = texts
                .iter()
                .map(|t| t.replace(['<', '>', '"', '&'], "x"))
                .collect();
            for (html, plain) in pages(&texts).iter().zip(pages(&tame)) {
                for c in ['<', '>', '"'] {
                    assert_eq!(
                        html.matches(c).count(),
                        plain.matches(c).count(),
                        "{c} from {texts:?} reached the page: {html}"
                    );
                }
                for (at, _) in html.match_indices('&') {
                    let rest = &html[at..];
                    assert!(
                        ["&amp;", "&lt;", "&gt;", "&quot;"]
                            .iter()
                            .any(|e| rest.starts_with(e)),
                        "a bare & from {texts:?}: {html}"
                    );
                }
                assert!(!html.contains("<script"), "{html}");
            }
        }
    }
}
