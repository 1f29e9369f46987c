//! The action page's HTML: plain, server-rendered, no script, readable on a phone and with a
//! screen reader (labels, a heading per part, real buttons). Every interpolated text is
//! escaped here.

use std::fmt::Write;

/// One line of facts: a text, or a link (opened without a Referer: the page URL is a secret).
pub(crate) enum Fact {
    Text(String),
    Link { text: String, href: String },
}

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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

pub(super) fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"same-origin\">\
         <title>{}</title><style>{STYLE}</style></head><body><main>",
        escape(title)
    );
}

fn facts_list(out: &mut String, facts: &[(&str, Fact)], urgent: bool) {
    out.push_str("<dl>");
    for (name, fact) in facts {
        let class = if urgent && *name == "Time left" {
            " class=\"urgent\""
        } else {
            ""
        };
        let value = match fact {
            Fact::Text(t) => escape(t),
            Fact::Link { text, href } => format!(
                "<a href=\"{}\" rel=\"noreferrer noopener\" target=\"_blank\">{}</a>",
                escape(href),
                escape(text)
            ),
        };
        let _ = write!(out, "<dt>{}</dt><dd{class}>{value}</dd>", escape(name));
    }
    out.push_str("</dl>");
}

/// The decision page: the facts, then one form (its contract is fixed in spec §4).
pub(crate) fn form_page(
    facts: &[(&str, Fact)],
    urgent: bool,
    token: &str,
    referral_id: &str,
    reasons: &[String],
) -> String {
    let mut out = String::new();
    head(&mut out, "Answer a co-sell referral");
    out.push_str("<h1>Answer this co-sell referral before its deadline</h1>");
    facts_list(&mut out, facts, urgent);
    let _ = write!(
        out,
        "<form method=\"post\">\
         <input type=\"hidden\" name=\"token\" value=\"{}\">\
         <input type=\"hidden\" name=\"referral\" value=\"{}\">\
         <h2>Accept</h2>\
         <button type=\"submit\" class=\"accept\" name=\"action\" value=\"accept\">Accept referral</button>\
         <h2>Decline</h2>\
         <label for=\"reason\">Reason for declining</label><select id=\"reason\" name=\"reason\">",
        escape(token),
        escape(referral_id)
    );
    for reason in reasons {
        let r = escape(reason);
        let _ = write!(out, "<option value=\"{r}\">{r}</option>");
    }
    out.push_str(
        "</select>\
         <label for=\"note\">Note (optional; kept in the audit log)</label>\
         <textarea id=\"note\" name=\"note\" rows=\"2\" maxlength=\"1000\"></textarea>\
         <button type=\"submit\" class=\"decline\" name=\"action\" value=\"decline\">Decline referral</button>\
         </form></main></body></html>\n",
    );
    out
}

/// An outcome or a refusal: a heading, one sentence, and the facts when there are any.
pub(crate) fn message_page(title: &str, message: &str, facts: &[(&str, Fact)], ok: bool) -> String {
    let mut out = String::new();
    head(&mut out, title);
    let class = if ok { "outcome" } else { "outcome refused" };
    let _ = write!(
        out,
        "<h1>{}</h1><p class=\"{class}\" role=\"status\">{}</p>",
        escape(title),
        escape(message)
    );
    if !facts.is_empty() {
        facts_list(&mut out, facts, false);
    }
    out.push_str("</main></body></html>\n");
    out
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
