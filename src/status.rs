//! What the daemon knows, as `status` shows it (read from the store, rendered by
//! [`crate::render`]): referrals nearest expiry, counts, outbox,
//! conflicts, last cycles; and one referral's view (`status --referral ID`).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::deadline;
use crate::outside::Outside;
use crate::store::alerts::{self as astore, AlertRow};
use crate::store::google::{self as gstore, ConflictRow, Link};
use crate::store::outbox::{self, AuditRow, OutboxRow, State};
use crate::store::referrals::{self, ReferralSummary};
use crate::store::runs::{self, CycleRun};
use crate::store::schedule::{self, RefreshBacklog};
use crate::store::triage as tstore;
use crate::store::views::{self, GoogleRecord, LinkCounts};
use crate::store::{Store, StoreError};

/// A referral still waiting for an answer, with its deadline.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Expiring {
    #[serde(flatten)]
    pub(crate) referral: ReferralSummary,
    pub(crate) deadline: DateTime<Utc>,
    pub(crate) remaining_hours: f64,
    /// The tightest alert threshold already crossed, as configured (`"24h"`).
    pub(crate) threshold: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StateCount {
    /// `microsoft` or `aws`.
    pub(crate) source: String,
    pub(crate) status: String,
    pub(crate) substatus: String,
    pub(crate) count: u64,
}

/// What the daemon knows, as `status` prints it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StatusReport {
    pub(crate) generated_at: DateTime<Utc>,
    pub(crate) database: String,
    pub(crate) referrals_by_state: Vec<StateCount>,
    /// Incoming referrals still New, nearest deadline first.
    pub(crate) awaiting_response: Vec<Expiring>,
    /// The service level: answered, time to answer, expired, nearest deadlines.
    pub(crate) last_30_days: crate::service_level::ServiceLevel,
    pub(crate) rejected_records: u64,
    pub(crate) last_cycles: Vec<CycleRun>,
    /// Outbox actions by kind and state.
    pub(crate) outbox: Vec<OutboxCount>,
    /// Actions that need a person (dead or quarantined) and open ones, newest first.
    pub(crate) actions_needing_attention: Vec<OutboxRow>,
    pub(crate) open_actions: Vec<OutboxRow>,
    pub(crate) conflicts: Vec<ConflictRow>,
    /// Referrals the forward rules chose that cannot make a valid lead.
    pub(crate) cannot_forward: Vec<Blocked>,
    pub(crate) links: LinkCounts,
    /// The refresh lane: records tracked and due, the oldest unchecked, the budget used.
    pub(crate) refresh: RefreshBacklog,
    /// Whether the Google side runs (`[google] partner_id`). Microsoft-only, nothing is
    /// planned into Google, so `refresh.plan_queue` is 0 rather than every referral "waiting".
    pub(crate) google_enabled: bool,
    /// Partner Center events (present when `[webhook]` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) webhooks: Option<crate::store::webhook::WebhookStats>,
    /// The triage rules: their mode and what they decided (spec §7).
    pub(crate) triage: TriageStatus,
}

/// `status`'s triage block: a count per rule and decision of the referrals awaiting an
/// answer as the last cycle decided them, and the rule answers of the last hour.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TriageStatus {
    pub(crate) mode: &'static str,
    pub(crate) rules: usize,
    pub(crate) max_answers_per_hour: u32,
    pub(crate) decisions: Vec<crate::store::triage::RuleCount>,
    /// Rule answers queued in the last 60 minutes, per (rule, decision).
    pub(crate) answered_last_hour: Vec<RuleAnswers>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RuleAnswers {
    pub(crate) rule: String,
    pub(crate) decision: String,
    pub(crate) count: u64,
}

fn triage_status(
    c: &rusqlite::Connection,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<TriageStatus, StoreError> {
    Ok(TriageStatus {
        mode: config.triage.mode.as_str(),
        rules: config.rules.len(),
        max_answers_per_hour: config.triage.max_answers_per_hour,
        decisions: tstore::counts(c)?,
        answered_last_hour: tstore::answered_since(c, now - chrono::Duration::hours(1))?
            .into_iter()
            .map(|(rule, decision, count)| RuleAnswers {
                rule,
                decision,
                count,
            })
            .collect(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct OutboxCount {
    pub(crate) kind: String,
    pub(crate) state: String,
    pub(crate) count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Blocked {
    pub(crate) referral_id: String,
    pub(crate) reason: String,
}

pub(crate) fn status(
    store: &Store,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<StatusReport, StoreError> {
    let window = config.alerts.response_window.as_chrono();
    let thresholds = thresholds(config);
    store.call_blocking(|c| {
        let mut awaiting: Vec<Expiring> = referrals::awaiting_response(c)?
            .into_iter()
            .map(|r| expiring(r, window, &thresholds, now))
            .collect();
        awaiting.sort_by(|a, b| {
            a.deadline
                .cmp(&b.deadline)
                .then(a.referral.id.cmp(&b.referral.id))
        });
        // Deadlines still ahead: a past one can no longer be met.
        let ahead = awaiting.iter().filter(|e| e.deadline > now);
        let nearest = ahead.map(|e| crate::service_level::NearestDeadline {
            referral_id: e.referral.id.clone(),
            source: e.referral.source.clone(),
            customer: e
                .referral
                .customer
                .as_ref()
                .map(|c| c.unescaped().to_string()),
            deadline: e.deadline,
            remaining_hours: e.remaining_hours,
        });
        let last_30_days = crate::service_level::last_days(c, 30, now, nearest)?;
        Ok(StatusReport {
            generated_at: now,
            last_30_days,
            database: store.path().display().to_string(),
            referrals_by_state: referrals::counts_by_state(c)?
                .into_iter()
                .map(|(source, status, substatus, count)| StateCount {
                    source,
                    status,
                    substatus,
                    count,
                })
                .collect(),
            awaiting_response: awaiting,
            rejected_records: referrals::count_rejected(c)?,
            last_cycles: runs::recent_cycles(c, 5)?,
            outbox: outbox::counts_by_state(c)?
                .into_iter()
                .map(|(kind, state, count)| OutboxCount { kind, state, count })
                .collect(),
            actions_needing_attention: outbox::list(c, &[State::Dead, State::Quarantined], 50)?,
            open_actions: outbox::list(c, &[State::Pending, State::InFlight], 50)?,
            conflicts: gstore::conflicts(c)?,
            cannot_forward: gstore::forward_blocked(c)?
                .into_iter()
                .map(|(referral_id, reason)| Blocked {
                    referral_id,
                    reason,
                })
                .collect(),
            refresh: {
                let mut backlog = schedule::backlog(c, now)?;
                // Referrals are still queued for planning Microsoft-only (turning Google on
                // later plans them at once), but nothing will plan them while it is off:
                // they are not "waiting", and saying so forever read as a stuck daemon.
                if !config.google_enabled() {
                    backlog.plan_queue = 0;
                }
                backlog
            },
            google_enabled: config.google_enabled(),
            links: views::link_counts(c)?,
            webhooks: match config.webhook {
                Some(_) => Some(crate::store::webhook::stats(c)?),
                None => None,
            },
            triage: triage_status(c, config, now)?,
        })
    })
}

/// One referral with everything known about it (`status --referral ID`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReferralView {
    pub(crate) generated_at: DateTime<Utc>,
    pub(crate) referral: ReferralSummary,
    /// Set while the referral still waits for an answer.
    pub(crate) awaiting: Option<Expiring>,
    /// With `[actions]`, while it waits: the signed link to the page that answers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) action_url: Option<String>,
    pub(crate) link: Option<Link>,
    pub(crate) lead: Option<GoogleRecord>,
    pub(crate) opportunity: Option<GoogleRecord>,
    /// Every remote write about it, oldest first.
    pub(crate) timeline: Vec<AuditRow>,
    /// Its outbox actions, newest first.
    pub(crate) actions: Vec<OutboxRow>,
    /// Alerts about it, newest first.
    pub(crate) alerts: Vec<AlertRow>,
    /// What the rules decided at the last cycle, while it awaits an answer.
    pub(crate) triage: Option<crate::store::triage::DecisionRow>,
    /// The rule answer queued for it, if a rule answered it.
    pub(crate) rule_answer: Option<RuleAnswer>,
    /// An AWS invitation accepted here: its accept task as last read (the `TaskId`, and the
    /// new `OpportunityId` once `COMPLETE`, or `ReasonCode` and `Message` when `FAILED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) aws_task: Option<crate::sync::aws_answer::AcceptTask>,
    /// An AWS engagement invitation's own facts (`source` = `aws`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) invitation: Option<InvitationView>,
}

/// The task of the newest AWS accept among a referral's actions (newest first) that has one.
fn aws_task(actions: &[OutboxRow]) -> Option<crate::sync::aws_answer::AcceptTask> {
    actions
        .iter()
        .filter(|a| a.kind == outbox::AWS_ACCEPT)
        .filter_map(|a| a.result.as_deref())
        .filter_map(|r| {
            serde_json::from_str::<crate::sync::push::answer_referral::AnswerResult>(r).ok()
        })
        .find_map(|r| r.task)
}

/// An AWS engagement invitation in full (`status --referral engi-…`, spec §8), read from
/// the stored `GetEngagementInvitation` answer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InvitationView {
    /// AWS's own status, verbatim (`PENDING`, `ACCEPTED`, `REJECTED`, `EXPIRED`, or one
    /// this version does not know).
    pub(crate) aws_status: Option<String>,
    pub(crate) payload_type: Option<String>,
    pub(crate) title: Outside,
    pub(crate) customer: Option<Outside>,
    pub(crate) country: Option<String>,
    pub(crate) sender_company_name: Option<Outside>,
    pub(crate) sender_aws_account_id: Option<String>,
    pub(crate) engagement_id: Option<String>,
    pub(crate) invitation_date: Option<DateTime<Utc>>,
    pub(crate) deadline: Option<DateTime<Utc>>,
    /// No `ExpirationDate`: the deadline is `InvitationDate` + 15 days.
    pub(crate) deadline_estimated: bool,
    pub(crate) rejection_reason: Option<Outside>,
    pub(crate) invitation_message: Option<Outside>,
    /// Members AWS sent that could not be read (named), if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) problems: Vec<String>,
}

impl InvitationView {
    /// From the stored raw JSON; `None` when it is not a readable invitation.
    fn from_raw(raw: &str) -> Option<InvitationView> {
        let value: serde_json::Value = serde_json::from_str(raw).ok()?;
        let inv = crate::aws::model::Invitation::from_value(&value).ok()?;
        let deadline = inv.deadline();
        let text = |pointer: &str| {
            value
                .pointer(pointer)
                .and_then(serde_json::Value::as_str)
                .map(Outside::from)
        };
        Some(InvitationView {
            aws_status: inv.status.as_ref().map(|s| s.as_str().to_string()),
            payload_type: inv.payload_type.as_ref().map(|p| p.as_str().to_string()),
            title: Outside::new(inv.title),
            customer: inv.customer.map(Outside::new),
            country: inv.country,
            sender_company_name: inv.sender_company_name.map(Outside::new),
            sender_aws_account_id: inv.sender_aws_account_id,
            engagement_id: inv.engagement_id,
            invitation_date: inv.invitation_date,
            deadline: deadline.map(|d| d.at),
            deadline_estimated: deadline.is_some_and(|d| d.estimated),
            rejection_reason: inv.rejection_reason.map(Outside::new),
            invitation_message: text("/InvitationMessage"),
            problems: inv.problems,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RuleAnswer {
    pub(crate) rule: String,
    pub(crate) decision: String,
    pub(crate) queued_at: DateTime<Utc>,
}

/// With `[actions]`: each expiring alert's link to answer its referral, signed now (never
/// stored), so a referral alerted before `[actions]` was turned on has one too. Only while the
/// referral still awaits an answer: an answered one needs no link, and shows no capability.
pub(crate) fn with_action_urls(
    store: &Store,
    config: &Config,
    rows: &mut [crate::store::alerts::AlertRow],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(signer) = crate::links::LinkSigner::load_existing(config) else {
        return Ok(());
    };
    for row in rows
        .iter_mut()
        .filter(|r| r.alert.kind == "referral_expiring")
    {
        let a = &mut row.alert;
        let Some(id) = a.referral_id.clone() else {
            continue;
        };
        let awaiting = store.call_blocking(|c| {
            Ok(crate::store::referrals::awaiting_response_one(c, &id)?.is_some())
        })?;
        if !awaiting {
            continue;
        }
        let deadline = a
            .deadline
            .as_deref()
            .and_then(|d| DateTime::parse_from_rfc3339(d).ok());
        if let (Some(id), Some(deadline)) = (&a.referral_id, deadline) {
            a.action_url = signer.url_until(id, deadline.with_timezone(&Utc), now);
        }
    }
    Ok(())
}

/// `status --referral ID`; `None` when the database does not know the referral.
pub(crate) fn referral_view(
    store: &Store,
    config: &Config,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Option<ReferralView>, StoreError> {
    let window = config.alerts.response_window.as_chrono();
    let thresholds = thresholds(config);
    let signer = crate::links::LinkSigner::load_existing(config);
    let view = store.call_blocking(|c| {
        let Some(referral) = views::referral(c, id)? else {
            return Ok(None);
        };
        let waiting = referral.status.as_deref() == Some("New")
            && matches!(referral.substatus.as_deref(), Some("Pending" | "Received"));
        let awaiting = waiting.then(|| expiring(referral.clone(), window, &thresholds, now));
        let invitation = match referral.is_aws() {
            true => views::raw_json(c, id)?
                .as_deref()
                .and_then(InvitationView::from_raw),
            false => None,
        };
        let link = gstore::link(c, id)?;
        let lead = match link.as_ref().and_then(|l| l.lead_name.as_deref()) {
            Some(name) => views::lead(c, name)?,
            None => None,
        };
        let opportunity = match link.as_ref().and_then(|l| l.opportunity_name.as_deref()) {
            Some(name) => views::opportunity(c, name)?,
            None => None,
        };
        let action_url = match (&awaiting, &signer) {
            (Some(e), Some(signer)) => signer.url_until(id, e.deadline, now),
            _ => None,
        };
        let actions = outbox::for_referral(c, id, 100)?;
        Ok(Some(ReferralView {
            generated_at: now,
            aws_task: aws_task(&actions),
            awaiting,
            action_url,
            link,
            lead,
            opportunity,
            timeline: outbox::audit_rows(c, Some(id), None, 500)?,
            actions,
            alerts: astore::for_referral(c, id, 100)?,
            triage: tstore::decision_of(c, id)?,
            rule_answer: tstore::rule_answer_of(c, id)?.map(|(rule, decision, queued_at)| {
                RuleAnswer {
                    rule,
                    decision,
                    queued_at,
                }
            }),
            referral,
            invitation,
        }))
    })?;
    let Some(mut view) = view else {
        return Ok(None);
    };
    with_action_urls(store, config, &mut view.alerts, now)?;
    Ok(Some(view))
}

fn thresholds(config: &Config) -> Vec<chrono::Duration> {
    config
        .alerts
        .thresholds
        .iter()
        .map(|t| t.as_chrono())
        .collect()
}

fn expiring(
    referral: ReferralSummary,
    window: chrono::Duration,
    thresholds: &[chrono::Duration],
    now: DateTime<Utc>,
) -> Expiring {
    let due = deadline::deadline(referral.created_at, referral.expires_at, window);
    let remaining = due - now;
    let threshold = deadline::tightest_crossed(remaining, thresholds)
        .and_then(|t| t.to_std().ok())
        .map(|t| crate::config::HumanDuration(t).to_string());
    Expiring {
        referral,
        deadline: due,
        remaining_hours: (remaining.num_minutes() as f64 / 60.0 * 10.0).round() / 10.0,
        threshold,
    }
}
