//! The commands' tables and listings for people, and their JSON for programs: times for
//! people in [`crate::timefmt`]'s one format, RFC 3339 in JSON. A command's one-line
//! confirmation ("referral X accepted", "action 7 dropped") is written where the command
//! runs, in `app/` (`Printed::ok`): it is a sentence, not a layout.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::alerts::deliver::AlertStats;
use crate::alerts::format::deal;
use crate::outside::Outside;
use crate::status::{ReferralView, StatusReport};
use crate::store::alerts::AlertRow;
use crate::store::outbox::{AuditRow, OutboxRow};
use crate::store::schedule::RefreshBacklog;
use crate::sync::CycleReport;
use crate::timefmt::{human, human_text, time_left};
use crate::webhook::registration::Registration;

/// Pretty JSON with a final newline.
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> String {
    match serde_json::to_string_pretty(value) {
        Ok(text) => text + "\n",
        // Our report types always serialize; say so rather than print nothing.
        Err(e) => format!("{{\"error\": \"cannot serialize the report: {e}\"}}\n"),
    }
}

/// `sync`'s one-line summary of a cycle that ran.
pub(crate) fn cycle(report: &CycleReport, alerts: &AlertStats) -> String {
    format!(
        "cycle ok: {} pages, {} new, {} changed, {} unchanged, {} unreadable; google: {} read, {} queued, {} written, {} to retry, {} dead, {} quarantined; alerts: {} raised, {} delivered, {} undelivered\n",
        report.pages,
        report.counts.new,
        report.counts.changed,
        report.counts.unchanged,
        report.counts.rejected,
        report.google.fetched,
        report.planned.queued,
        report.pushed.done,
        report.pushed.retried,
        report.pushed.dead,
        report.pushed.quarantined,
        alerts.raised,
        alerts.delivered,
        alerts.undelivered
    ) + &google_reads(&report.google)
        + &report.aws.map(aws_pulled).unwrap_or_default()
}

/// `sync`'s line about the AWS invitations (with `[aws]`).
fn aws_pulled(a: crate::sync::aws_pull::AwsPullStats) -> String {
    format!(
        "aws invitations: {} pages, {} new, {} changed, {} unchanged, {} unreadable, {} no longer pending ({} vanished)\n",
        a.pages,
        a.counts.new,
        a.counts.changed,
        a.counts.unchanged,
        a.counts.rejected,
        a.ended,
        a.vanished
    )
}

/// `sync`'s last line: what it re-read of the tracked Google records, what not, and why.
fn google_reads(g: &crate::sync::GooglePullStats) -> String {
    let next = match g.next_due_at {
        Some(at) if at <= chrono::Utc::now() => "now".to_string(),
        Some(at) => crate::timefmt::human(at),
        None => "never (none tracked)".to_string(),
    };
    let mut left = String::new();
    if g.failed > 0 {
        left += &format!(", {} failed (tried again later)", g.failed);
    }
    if g.left_due > 0 {
        left += &format!(", {} due but left to the hourly read budget", g.left_due);
    }
    format!(
        "google records: {} re-read, {} not re-read (not due){left}; next due {next} (`sync --all` re-reads every one now)\n",
        g.fetched, g.not_due,
    )
}

/// `alerts list`.
pub(crate) fn alerts(rows: &[AlertRow]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no alerts\n");
    }
    for row in rows {
        let a = &row.alert;
        let _ = writeln!(
            out,
            "{}  {:<9} {}",
            human_text(&a.created_at),
            a.severity,
            a.kind,
        );
        let _ = writeln!(out, "{}", wrap(&a.message, 4));
        for (sink, state) in &row.deliveries {
            let _ = writeln!(out, "      {sink}: {state}");
        }
    }
    out
}

/// `check-config`'s closing comment: what reaches each sink, and the warning when a
/// threshold reaches none (spec §3).
pub(crate) fn routing(settings: &crate::alerts::AlertSettings) -> String {
    let mut out = String::from("\n# Alert routing (the log gets every alert):\n");
    let routes = settings.routes();
    if routes.is_empty() {
        out.push_str("#   no webhook or command sink: alerts go to the log only\n");
    }
    for (key, gets) in routes {
        let _ = writeln!(out, "#   {key}");
        let _ = writeln!(out, "{}", commented(&gets, 6));
    }
    if let Some(warning) = settings.routing_warning() {
        let _ = writeln!(out, "{}", commented(&warning, 2));
    }
    out
}

/// `text` wrapped at `indent` as TOML comment lines (`#` in the indent's first column).
fn commented(text: &str, indent: usize) -> String {
    wrap(text, indent)
        .lines()
        .map(|l| format!("#{}", &l[1..]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One sink's lines of `alerts test`: the result, then what the sink gets.
pub(crate) fn sink_test(test: &crate::alerts::deliver::SinkTest) -> String {
    let head = match &test.result {
        Ok(()) => format!("ok      {}", test.key),
        Err(e) => format!("FAILED  {}: {e}", test.key),
    };
    format!("{head}\n{}\n", wrap(&format!("gets: {}", test.gets), 8))
}

/// `audit`, and the timeline of `status --referral`: a head line per write (time, API,
/// method, outcome, status), then its resource and the rest wrapped under it, so a line fits
/// 80 columns however long a resource name or request id is.
pub(crate) fn audit(rows: &[AuditRow]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no remote writes recorded\n");
    }
    for r in rows {
        let status = r.status_code.map(|s| s.to_string());
        let _ = writeln!(
            out,
            "{}  {:<9} {:<19} {:<7} {:>3}",
            human_text(&r.at),
            r.api,
            r.method,
            r.outcome,
            status.as_deref().unwrap_or("-"),
        );
        // One paragraph each, so `request-id: ID` and `by: ACTOR` never break apart.
        let mut rest = format!(
            "{}\nfields: {}\nrequest-id: {}",
            r.resource,
            r.fields.as_deref().unwrap_or("-"),
            r.request_id.as_deref().unwrap_or("-"),
        );
        if let Some(actor) = &r.actor {
            let _ = write!(rest, "\nby: {actor}");
        }
        if let Some(detail) = &r.detail {
            let _ = write!(rest, "\n({detail})");
        }
        let _ = writeln!(out, "{}", wrap(&rest, 4));
    }
    out
}

/// One line of `rules test` (spec §7's JSON object).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RuleTest {
    pub(crate) referral_id: String,
    pub(crate) source: String,
    pub(crate) rule: Option<String>,
    pub(crate) decision: Option<String>,
    pub(crate) reason: Option<String>,
    #[serde(skip)]
    deadline: DateTime<Utc>,
}

impl From<&crate::store::triage::DecisionRow> for RuleTest {
    fn from(d: &crate::store::triage::DecisionRow) -> Self {
        RuleTest {
            referral_id: d.referral_id.clone(),
            source: d.source.clone(),
            rule: d.rule.clone(),
            decision: d.decision.clone(),
            reason: d.reason.clone(),
            deadline: d.deadline,
        }
    }
}

/// `rules test`: per referral (nearest deadline first) a head line (id, decision, rule) and
/// below it the source, deadline and reason, wrapped; then the totals per rule. 80 columns.
pub(crate) fn rules_test(rows: &[RuleTest], mode: &str, rules: usize) -> String {
    let mut out = String::new();
    if rules == 0 {
        out.push_str("no [[rules]] configured: every referral is left to people\n");
    }
    if rows.is_empty() {
        out.push_str("no referral awaits an answer\n");
        return out;
    }
    // 36 (a referral id) + 2 + 8 + 2 + 32 = 80.
    let _ = writeln!(out, "{:<36}  {:<8}  RULE", "REFERRAL", "DECISION");
    let mut totals = std::collections::BTreeMap::<(String, String), u64>::new();
    for r in rows {
        let decision = r.decision.as_deref().unwrap_or("-");
        let rule = r.rule.as_deref().unwrap_or("-");
        *totals
            .entry((rule.to_string(), decision.to_string()))
            .or_default() += 1;
        let _ = writeln!(
            out,
            "{:<36}  {:<8}  {}",
            truncate(&r.referral_id, 36),
            decision,
            truncate(rule, 32)
        );
        let reason = r
            .reason
            .as_deref()
            .map(|x| format!(": {x}"))
            .unwrap_or_default();
        let detail = format!("{}, deadline {}{reason}", r.source, human(r.deadline));
        let _ = writeln!(out, "{}", wrap(&detail, 4));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{}",
        wrap(
            &format!(
                "{} referrals awaiting an answer; mode {mode} (nothing was sent by this command):",
                rows.len()
            ),
            0
        )
    );
    for ((rule, decision), n) in totals {
        let _ = writeln!(out, "  {n:>6}  {decision:<8} {}", truncate(&rule, 62));
    }
    out
}

/// `outbox list`: a head line per action, its referral and its last error or result below,
/// wrapped to 80 columns.
pub(crate) fn outbox(rows: &[OutboxRow]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no actions\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<7} {:<12} {:<18} {:>3}  {:<20}\n        REFERRAL / LAST ERROR OR RESULT",
        "ID", "STATE", "KIND", "TRY", "NEXT ATTEMPT"
    );
    for r in rows {
        let next = if r.state.is_open() {
            human(r.next_attempt_at)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<7} {:<12} {:<18} {:>3}  {:<20}\n        {}",
            r.id, r.state, r.kind, r.attempts, next, r.referral_id,
        );
        if let Some(text) = r.last_error.as_deref().or(r.result.as_deref()) {
            let _ = writeln!(out, "{}", wrap(text, 8));
        }
    }
    out
}

/// `status` for a terminal: the referrals closest to expiry first.
pub(crate) fn status(report: &StatusReport, limit: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cosell-sync status — {}", report.database);
    let _ = writeln!(out);
    awaiting(&mut out, report, limit);
    let _ = writeln!(out);
    triage(&mut out, &report.triage);
    let _ = writeln!(out);
    service_level(&mut out, &report.last_30_days, report.generated_at);
    let _ = writeln!(out);
    states(&mut out, report);
    let _ = writeln!(out);
    google_and_outbox(&mut out, report, limit);
    conflicts(&mut out, report, limit);
    let _ = writeln!(out);
    last_cycles(&mut out, report);
    out
}

/// The triage block: the mode, then a count per rule and decision (spec §7).
fn triage(out: &mut String, t: &crate::status::TriageStatus) {
    let _ = writeln!(
        out,
        "Triage rules: {} configured, mode {} (at most {} rule answers an hour)",
        t.rules, t.mode, t.max_answers_per_hour
    );
    if t.decisions.is_empty() && t.rules > 0 {
        let _ = writeln!(out, "  no decisions recorded yet (the next cycle decides)");
    }
    for d in &t.decisions {
        let state = match (d.decision.as_deref(), d.state.as_str()) {
            (Some("accept" | "decline"), "shown") => {
                format!("would {}", d.decision.as_deref().unwrap_or(""))
            }
            (Some(verb), "held") => format!("{verb}, held by the hourly cap"),
            (Some(verb), "queued") => format!("{verb}, queued"),
            (Some(verb), _) => verb.to_string(),
            (None, _) => "no rule matched".into(),
        };
        let _ = writeln!(
            out,
            "  {:>6}  {:<24} {state}",
            d.count,
            truncate(d.rule.as_deref().unwrap_or("-"), 24)
        );
    }
    for a in &t.answered_last_hour {
        let _ = writeln!(
            out,
            "  {:>6}  {:<24} {} sent in the last hour",
            a.count,
            truncate(&a.rule, 24),
            a.decision
        );
    }
}

/// The "last 30 days" block: the partner's service level.
fn service_level(
    out: &mut String,
    s: &crate::service_level::ServiceLevel,
    now: chrono::DateTime<chrono::Utc>,
) {
    let hours = |h: Option<f64>| match h {
        Some(h) => time_left(chrono::Duration::minutes((h * 60.0).round() as i64)),
        None => "-".into(),
    };
    let _ = writeln!(out, "Last {} days:", s.days);
    // Two lines: with days and hours in both figures, one line passes 80 columns.
    let _ = writeln!(
        out,
        "  answered {} ({} accepted, {} declined)",
        s.answered, s.accepted, s.declined,
    );
    let _ = writeln!(
        out,
        "  time to answer: median {}, p90 {}",
        hours(s.median_hours_to_answer),
        hours(s.p90_hours_to_answer)
    );
    let _ = writeln!(out, "  expired unanswered: {}", s.expired);
    // Each source's share, once there is more than Microsoft's (spec §8).
    if s.by_source.iter().any(|c| c.source != "microsoft") {
        for c in &s.by_source {
            let _ = writeln!(
                out,
                "  {:<10} {} answered ({} accepted, {} declined), {} expired, {} waiting",
                c.source,
                c.accepted + c.declined,
                c.accepted,
                c.declined,
                c.expired,
                c.waiting
            );
        }
    }
    if s.nearest_deadlines.is_empty() {
        let _ = writeln!(out, "  nearest deadlines: none waiting");
    } else {
        let _ = writeln!(out, "  nearest deadlines:");
    }
    // 80 columns: the referral id stays whole (it is what `status --referral` takes).
    for n in &s.nearest_deadlines {
        let _ = writeln!(
            out,
            "    {:<11} {:<26} {}",
            time_left(n.deadline - now),
            truncate(n.customer.as_deref().unwrap_or("?"), 26),
            match n.source.as_str() {
                "microsoft" => n.referral_id.clone(),
                other => format!("{} ({other})", n.referral_id),
            }
        );
    }
}

fn awaiting(out: &mut String, report: &StatusReport, limit: usize) {
    let invitations = (report.awaiting_response.iter())
        .filter(|e| e.referral.is_aws())
        .count();
    match invitations {
        0 => writeln!(
            out,
            "Awaiting response ({} incoming referrals still New), nearest deadline first:",
            report.awaiting_response.len()
        ),
        n => writeln!(
            out,
            "Awaiting response ({} referrals, {n} AWS invitation{}), nearest deadline first:",
            report.awaiting_response.len() - n,
            if n == 1 { "" } else { "s" }
        ),
    }
    .ok();
    if report.awaiting_response.is_empty() {
        let _ = writeln!(out, "  none");
        return;
    }
    // 80 columns: the referral id (36) is what `status --referral` takes, so it stays whole;
    // the deadline drops its year and zone (the header says UTC), the customer is cut. The
    // alert threshold and substatus are in `status --json` and `status --referral`.
    let _ = writeln!(
        out,
        "  {:<11} {:<11} {:<17} REFERRAL",
        "LEFT", "UTC", "CUSTOMER"
    );
    for e in report.awaiting_response.iter().take(limit) {
        let left = time_left(e.deadline - report.generated_at);
        let _ = writeln!(
            out,
            "  {:<11} {:<11} {:<17} {}",
            if left == "expired" {
                "EXPIRED".into()
            } else {
                left
            },
            e.deadline.format("%m-%d %H:%M"),
            truncate(
                e.referral.customer.as_ref().map_or("?", Outside::unescaped),
                17
            ),
            source_tagged(&e.referral)
        );
    }
    if report.awaiting_response.len() > limit {
        let _ = writeln!(
            out,
            "  … {} of {} shown (status --limit N, or status --json, lists more)",
            limit,
            report.awaiting_response.len()
        );
    }
}

/// A referral's id, an AWS invitation's with its source (`engi-… (aws, estimated)`: its
/// deadline is InvitationDate + 15 days), within 80 columns.
fn source_tagged(r: &crate::store::referrals::ReferralSummary) -> String {
    match (r.is_aws(), r.deadline_estimated) {
        (true, true) => format!("{} (aws, estimated)", r.id),
        (true, false) => format!("{} (aws)", r.id),
        (false, _) => r.id.clone(),
    }
}

fn states(out: &mut String, report: &StatusReport) {
    let _ = writeln!(out, "Referrals by state:");
    if report.referrals_by_state.is_empty() {
        let _ = writeln!(out, "  none yet");
    }
    let (aws, microsoft): (Vec<_>, Vec<_>) = report
        .referrals_by_state
        .iter()
        .partition(|s| s.source == crate::store::invitations::AWS);
    for s in &microsoft {
        let _ = writeln!(out, "  {:<8} {:<10} {:>6}", s.status, s.substatus, s.count);
    }
    if !aws.is_empty() {
        // AWS's own words beside ours: PENDING is New/Pending, and so on (spec §8).
        let _ = writeln!(out, "AWS invitations by state:");
        for s in &aws {
            let theirs = match (s.status.as_str(), s.substatus.as_str()) {
                ("New", "Pending") => "PENDING",
                ("Active", "Accepted") => "ACCEPTED",
                ("Closed", "Declined") => "REJECTED",
                ("Closed", "Expired") => "EXPIRED",
                ("Closed", crate::store::invitations::VANISHED) => "(vanished)",
                (other, _) => other,
            };
            let _ = writeln!(
                out,
                "  {:<8} {:<10} {:>6}  {theirs}",
                s.status, s.substatus, s.count
            );
        }
    }
    if report.rejected_records > 0 {
        let _ = writeln!(
            out,
            "  ({} records could not be read; see the rejected_records table)",
            report.rejected_records
        );
    }
}

fn google_and_outbox(out: &mut String, report: &StatusReport, limit: usize) {
    if report.google_enabled {
        let _ = writeln!(
            out,
            "Google: {} leads and {} opportunities tracked",
            report.links.leads, report.links.opportunities
        );
        let _ = writeln!(
            out,
            "{}",
            wrap(&refresh(&report.refresh, report.generated_at), 0)
        );
    } else {
        let _ = writeln!(
            out,
            "{}",
            wrap(
                "Google: off (Microsoft-only: no [google] partner_id); referrals are watched and alerted on, none is planned into Google",
                0
            )
        );
    }
    if let Some(w) = &report.webhooks {
        let _ = writeln!(out, "{}", crate::webhook::status_line(w));
    }
    if !report.outbox.is_empty() {
        let summary: Vec<String> = report
            .outbox
            .iter()
            .map(|o| format!("{} {} {}", o.count, o.kind, o.state))
            .collect();
        let _ = writeln!(
            out,
            "{}",
            wrap(&format!("Outbox: {}", summary.join(", ")), 0)
        );
    }
    if !report.actions_needing_attention.is_empty() {
        let _ = writeln!(
            out,
            "Needs a person (dead or quarantined; cosell-sync outbox retry|drop ID):"
        );
        for a in report.actions_needing_attention.iter().take(limit) {
            let _ = writeln!(
                out,
                "  #{:<6} {:<11} {:<14} {}",
                a.id, a.state, a.kind, a.referral_id,
            );
            if let Some(e) = a.last_error.as_deref() {
                let _ = writeln!(out, "{}", wrap(e, 10));
            }
        }
    }
    if !report.open_actions.is_empty() {
        let _ = writeln!(out, "Open writes: {}", report.open_actions.len());
        for a in report.open_actions.iter().take(5) {
            let _ = writeln!(
                out,
                "  #{:<6} {:<10} {:<14} {}\n          attempts {}, next {}",
                a.id,
                a.state,
                a.kind,
                a.referral_id,
                a.attempts,
                human(a.next_attempt_at),
            );
            if let Some(e) = a.last_error.as_deref() {
                let _ = writeln!(out, "{}", wrap(&format!("last error: {e}"), 10));
            }
        }
    }
}

/// The refresh lane's line of `status`.
fn refresh(r: &RefreshBacklog, now: DateTime<Utc>) -> String {
    let oldest = match &r.oldest_unchecked {
        None => String::new(),
        Some(o) => match o.last_checked_at {
            Some(at) => format!(
                "; oldest check {} ago ({})",
                rough_age((now - at).num_seconds()),
                o.name
            ),
            None => format!("; never read yet: {}", o.name),
        },
    };
    format!(
        "Refresh lane: {} Google records tracked, {} due now, {} reads in the last hour, {} referrals waiting to be planned{}",
        r.tracked, r.due, r.reads_last_hour, r.plan_queue, oldest
    )
}

/// "45s", "12m", "3h 5m", "2d 4h".
fn rough_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn conflicts(out: &mut String, report: &StatusReport, limit: usize) {
    if !report.conflicts.is_empty() {
        let _ = writeln!(
            out,
            "Conflicts ([sync] conflict = \"manual\"; fix one side, the next cycle follows):"
        );
        for c in &report.conflicts {
            let _ = writeln!(out, "  {} {}: {}", c.referral_id, c.field, c.values());
        }
    }
    if !report.cannot_forward.is_empty() {
        let _ = writeln!(out, "Cannot become a Google lead:");
        for b in report.cannot_forward.iter().take(limit) {
            let _ = writeln!(out, "  {}: {}", b.referral_id, b.reason);
        }
    }
}

fn last_cycles(out: &mut String, report: &StatusReport) {
    let _ = writeln!(out, "Last cycles:");
    if report.last_cycles.is_empty() {
        let _ = writeln!(out, "  none yet");
    } else {
        let _ = writeln!(
            out,
            "  STARTED               OUTCOME PAGES   NEW CHANGED REJECTED WRITTEN FAILED"
        );
    }
    for c in &report.last_cycles {
        let _ = writeln!(
            out,
            "  {}  {:<7} {:>5} {:>5} {:>7} {:>8} {:>7} {:>6}{}",
            human(c.started_at),
            c.outcome,
            c.pages,
            c.referrals_new,
            c.referrals_changed,
            c.records_rejected,
            c.actions_done,
            c.actions_failed,
            c.error
                .as_deref()
                .map(|e| format!("\n{}", wrap(&format!("error: {e}"), 4)))
                .unwrap_or_default()
        );
    }
}

/// An AWS accept task: `task-… COMPLETE, opportunity O…`, or `FAILED: ReasonCode: Message`.
fn aws_task(t: &crate::sync::aws_answer::AcceptTask) -> String {
    let outcome = match (&t.opportunity_id, &t.reason_code) {
        (Some(o), _) => format!(", opportunity {o}"),
        (None, Some(code)) => format!(
            ": {code}: {}",
            t.message.as_deref().unwrap_or("(no Message)")
        ),
        (None, None) => String::new(),
    };
    format!(
        "{} {}{outcome}",
        t.task_id.as_deref().unwrap_or("(no TaskId)"),
        t.status.as_deref().unwrap_or("IN_PROGRESS")
    )
}

/// An AWS invitation's own facts, under its title line.
fn invitation(out: &mut String, inv: &crate::status::InvitationView) {
    let text = |t: &Option<Outside>| t.as_ref().map(|t| t.unescaped().to_string());
    let sender = match (text(&inv.sender_company_name), &inv.sender_aws_account_id) {
        (Some(name), Some(account)) => Some(format!("{name} (account {account})")),
        (Some(name), None) => Some(name),
        (None, Some(account)) => Some(format!("account {account}")),
        (None, None) => None,
    };
    let deadline = inv.deadline.map(|d| match inv.deadline_estimated {
        true => format!("{} (estimated: InvitationDate + 15 days)", human(d)),
        false => human(d),
    });
    for (key, value) in [
        ("source", Some("aws".to_string())),
        ("aws state", inv.aws_status.clone()),
        ("type", inv.payload_type.clone()),
        ("title", Some(inv.title.unescaped().to_string())),
        ("country", inv.country.clone()),
        ("sender", sender),
        ("sent", inv.invitation_date.map(human)),
        ("expires", deadline),
        ("eng. id", inv.engagement_id.clone()),
        ("message", text(&inv.invitation_message)),
        ("rejected", text(&inv.rejection_reason)),
    ] {
        if let Some(value) = value {
            let _ = writeln!(out, "  {:<10} {value}", format!("{key}:"));
        }
    }
    for problem in &inv.problems {
        let _ = writeln!(out, "  unreadable: {problem}");
    }
}

/// `status --referral ID`.
pub(crate) fn referral(view: &ReferralView) -> String {
    let mut out = String::new();
    let r = &view.referral;
    let _ = writeln!(
        out,
        "{} {} — {}",
        match r.is_aws() {
            true => "AWS invitation",
            false => "Referral",
        },
        r.id,
        r.name.as_ref().map_or("(no name)", Outside::unescaped)
    );
    if let Some(inv) = &view.invitation {
        invitation(&mut out, inv);
    }
    let customer = r.customer.as_ref().map_or("?", Outside::unescaped);
    let _ = writeln!(out, "  customer:  {customer}");
    let _ = writeln!(
        out,
        "  state:     {}/{}",
        r.status.as_deref().unwrap_or("?"),
        r.substatus.as_deref().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "  deal:      {}",
        deal(r.deal_value, r.currency.as_deref())
    );
    let _ = writeln!(out, "  created:   {}", human(r.created_at));
    if let Some(e) = &view.awaiting {
        let _ = writeln!(
            out,
            "  deadline:  {} ({} left{})",
            human(e.deadline),
            time_left(e.deadline - view.generated_at),
            e.threshold
                .as_deref()
                .map(|t| format!(", inside the {t} alert threshold"))
                .unwrap_or_default()
        );
    }
    if let Some(url) = &view.action_url {
        // A URL does not wrap: on a line of its own, to copy whole.
        let _ = writeln!(out, "  answer it (accept or decline):\n    {url}");
    }
    if let Some(t) = &view.aws_task {
        let _ = writeln!(out, "  AWS task:  {}", aws_task(t));
    }
    if let Some(d) = &view.triage {
        let _ = writeln!(out, "  rules:     {}", crate::triage::sentence(d));
    }
    if let Some(a) = &view.rule_answer {
        let _ = writeln!(
            out,
            "  rules:     rule {} answered it ({}, queued {})",
            a.rule,
            a.decision,
            human(a.queued_at)
        );
    }
    for (what, record) in [("lead", &view.lead), ("opportunity", &view.opportunity)] {
        let line = match record {
            Some(g) => format!(
                "{} ({}, read {})",
                g.name,
                g.state.as_deref().unwrap_or("?"),
                human(g.fetched_at)
            ),
            None => "none".into(),
        };
        let _ = writeln!(out, "  {what:<10} {line}");
    }
    // The facts above, each line fitted to 80 columns (a URL alone on its line stays whole).
    let mut out = fit(&out);
    out.push('\n');
    let _ = writeln!(out);
    let _ = writeln!(out, "Timeline (remote writes, oldest first):");
    for line in audit(&view.timeline).lines() {
        let _ = writeln!(out, "  {line}");
    }
    if !view.actions.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Outbox:");
        for line in outbox(&view.actions).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Alerts:");
    for line in alerts(&view.alerts).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// The width every command's text fits in.
pub(crate) const COLUMNS: usize = 80;

/// `text` word-wrapped to [`COLUMNS`], every line indented by `indent` spaces (a word longer
/// than the line, a URL say, gets a line of its own). No trailing newline.
pub(crate) fn wrap(text: &str, indent: usize) -> String {
    let width = COLUMNS.saturating_sub(indent).max(20);
    let pad = " ".repeat(indent);
    let mut lines: Vec<String> = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
        .iter()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each line of `text` fitted to [`COLUMNS`]: a longer one is wrapped, its continuation
/// indented under its first word (after the leading spaces and a "1. " or a severity).
pub(crate) fn fit(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.chars().count() <= COLUMNS {
                return line.to_string();
            }
            let lead = line.len() - line.trim_start().len();
            let rest = &line[lead..];
            let marker = rest
                .split_once(' ')
                .filter(|(w, _)| {
                    w.ends_with('.') && w[..w.len() - 1].chars().all(|c| c.is_ascii_digit())
                        || matches!(*w, "critical" | "warning" | "info" | "ok" | "FAILED")
                })
                .map_or(0, |(w, _)| w.len() + 1);
            let body = wrap(&rest[marker..], lead + marker);
            format!("{}{}{}", &line[..lead], &rest[..marker], body.trim_start())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(width - 1).collect();
        s.push('…');
        s
    }
}

/// `backup`: where the copy went and what it holds.
pub(crate) fn backup(
    path: &std::path::Path,
    report: &crate::store::backup::BackupReport,
) -> String {
    format!(
        "backup written to {} ({} bytes, schema version {}, {} referrals)\nrestore: stop the daemon, `cosell-sync restore PATH`, start the daemon; it re-links every lead from Partner Center\n",
        path.display(),
        report.bytes,
        report.schema_version,
        report.referrals
    )
}
/// `restore BACKUP`: what was installed, and what comes next.
pub(crate) fn restored(
    backup: &std::path::Path,
    r: &crate::store::restore::RestoreReport,
) -> String {
    fit(&format!(
        "restored {} to {} (schema version {}, {} referrals; owner {}:{}, mode 0600)\nnext: `systemctl start cosell-sync`; it re-links every lead from Partner Center (`cosell-sync outbox list --state dead` after the first cycle)\n",
        backup.display(),
        r.path.display(),
        r.contents.0,
        r.contents.1,
        r.owner.0,
        r.owner.1
    ))
}

/// `webhook register`: what was registered.
pub(crate) fn webhook_registered(r: &Registration, public_url: &str) -> String {
    format!(
        "registered {} for {} (subscriber {})\n",
        r.webhook_url.as_deref().unwrap_or(public_url),
        r.webhook_events.join(", "),
        r.subscriber_id.as_deref().unwrap_or("?")
    )
}

/// `webhook show`: the registration, and a note when it is not `webhook.public_url`.
pub(crate) fn webhook_registration(r: Option<&Registration>, public_url: &str) -> String {
    let Some(r) = r else {
        return "no registration; run `cosell-sync webhook register`\n".into();
    };
    let mut text = format!(
        "registered: {}\nevents: {}\nsubscriber: {}\n",
        r.webhook_url.as_deref().unwrap_or("?"),
        r.webhook_events.join(", "),
        r.subscriber_id.as_deref().unwrap_or("?")
    );
    if r.webhook_url.as_deref() != Some(public_url) {
        text.push_str(&format!(
            "note: webhook.public_url is {public_url}; run `cosell-sync webhook register`\n"
        ));
    }
    text
}

/// `webhook test` when a verified event arrived.
pub(crate) fn webhook_test_verified(via_temporary_receiver: bool) -> String {
    let by = if via_temporary_receiver {
        "a temporary receiver (the daemon is not running)"
    } else {
        "the running daemon's receiver"
    };
    format!("test-created event arrived and verified, received by {by}\n")
}
