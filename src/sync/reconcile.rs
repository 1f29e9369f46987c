//! Reconcile (pure, spec §2): from one referral's snapshot — the referral, its link, the
//! linked opportunity, the base values of the last sync, the writes already queued — plus the
//! policy and `now`, the writes to make. No I/O; every branch is table-tested below.
//!
//! Rules: never a write to a Closed referral; never a write whose value is already there;
//! patches carry only the changed fields; at most one lead create per referral, ever.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{json, Map, Value};

use crate::config::{ConflictPolicy, ForwardConfig, GoogleLeadConfig};
use crate::microsoft::{PatchOp, ReferralStatus, ReferralSubstatus};
use crate::store::google::{BaseUpdate, SnapshotRow};
use crate::store::outbox::{
    ADOPT_LINK, ANSWER_REFERRAL, AWS_ACCEPT, AWS_DECLINE, CREATE_LEAD, PATCH_OPPORTUNITY,
    PATCH_REFERRAL,
};

use super::adopt::{is_google_name, named_record, Named};
use super::answer::Answer;
use super::aws_answer::AwsAnswer;

/// The policy half of reconcile's input.
#[derive(Debug, Clone)]
pub struct Policy {
    pub partner_id: String,
    pub(crate) conflict: ConflictPolicy,
    pub(crate) lost_stages: Vec<String>,
    pub(crate) won_stages: Vec<String>,
    pub(crate) close_google_on_microsoft_close: bool,
    pub(crate) forward: ForwardConfig,
    pub(crate) lead: GoogleLeadConfig,
}

/// Stages after which an opportunity is not written to or polled any more.
pub(crate) const CLOSED_ADMIN: &str = "SALES_STAGE_CLOSED_ADMIN";
pub(crate) const CLOSED_LOST: &str = "SALES_STAGE_CLOSED_LOST";

impl Policy {
    pub(crate) fn final_stages(&self) -> Vec<String> {
        let mut stages = self.lost_stages.clone();
        stages.extend(self.won_stages.iter().cloned());
        stages.push(CLOSED_ADMIN.into());
        stages.push(CLOSED_LOST.into());
        stages
    }
}

/// A remote write to queue. The outbox stores it as tagged JSON (see `push::encode`), so a
/// row decodes back to exactly this, or is reported as undecodable — never guessed at.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Action {
    CreateLead {
        lead: Value,
    },
    PatchReferral {
        ops: Vec<PatchOp>,
        base_after: BaseUpdate,
    },
    PatchOpportunity {
        name: String,
        body: Value,
        mask: Vec<String>,
        base_after: BaseUpdate,
    },
    /// Read the Google record the referral's externalReferenceId names and link it if its
    /// externalSystemId is this referral (recovery; executed by `push::adopt_link`).
    AdoptLink {
        name: String,
    },
    /// Accept or decline (queued by a person, never planned here): stored in its own
    /// versioned format (`sync::answer::encode`), hence not serialized with the others.
    #[serde(skip)]
    AnswerReferral {
        answer: Answer,
    },
    /// Accept an AWS engagement invitation (queued by a person; its own versioned format,
    /// `sync::aws_answer::encode`; executed by `push::aws_accept`).
    #[serde(skip)]
    AwsAccept {
        answer: AwsAnswer,
    },
    /// Decline an AWS engagement invitation (`push::aws_decline`).
    #[serde(skip)]
    AwsDecline {
        answer: AwsAnswer,
    },
}

impl Action {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Action::CreateLead { .. } => CREATE_LEAD,
            Action::PatchReferral { .. } => PATCH_REFERRAL,
            Action::PatchOpportunity { .. } => PATCH_OPPORTUNITY,
            Action::AdoptLink { .. } => ADOPT_LINK,
            Action::AnswerReferral { .. } => ANSWER_REFERRAL,
            Action::AwsAccept { .. } => AWS_ACCEPT,
            Action::AwsDecline { .. } => AWS_DECLINE,
        }
    }
}

/// Both sides changed a field differently and the policy is `manual`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Conflict {
    pub(crate) field: &'static str,
    pub(crate) microsoft: String,
    pub(crate) google: String,
    pub(crate) base: String,
}

/// What reconcile decided for one referral.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Plan {
    pub(crate) actions: Vec<Action>,
    pub(crate) conflicts: Vec<Conflict>,
    /// The forward rules chose the referral but it cannot make a valid lead (why).
    pub(crate) forward_blocked: Option<String>,
    /// Fields both sides already agree on whose base differs: record without writing.
    pub(crate) agreed: BaseUpdate,
}

pub(crate) fn reconcile(snapshot: &SnapshotRow, policy: &Policy, now: DateTime<Utc>) -> Plan {
    let mut plan = Plan::default();
    let r = &snapshot.referral.referral;
    let closed = r.status == Some(ReferralStatus::Closed);
    let blocked = |kind: &str| snapshot.blocked_kinds.iter().any(|k| k == kind);

    // Recovery: an unlinked referral that names a Google record of this partner is adopted,
    // never given a create (a lost or restored database re-links from Partner Center).
    if snapshot.link.is_none() {
        match named_record(r.external_reference_id.as_deref(), &policy.partner_id) {
            Named::Ours(name) => {
                plan.actions.push(Action::AdoptLink { name });
                return plan;
            }
            Named::OtherPartner(name) => {
                if forward_chosen(snapshot, &policy.forward) {
                    plan.forward_blocked = Some(format!(
                        "its externalReferenceId names {name}, a Google record of another partner than {}; no lead is created over it",
                        policy.partner_id
                    ));
                }
                return plan;
            }
            Named::Nothing => {}
        }
    }
    // Forward: a new incoming referral with no Google record and no create ever queued.
    if snapshot.link.is_none()
        && !snapshot.create_exists
        && forward_chosen(snapshot, &policy.forward)
    {
        let raw: Value = serde_json::from_str(&snapshot.referral.raw).unwrap_or(Value::Null);
        match super::mapping::lead_for(r, &raw, &policy.lead, now) {
            Ok(lead) => plan.actions.push(Action::CreateLead { lead }),
            Err(reason) => plan.forward_blocked = Some(reason.to_string()),
        }
    }
    let Some(link) = &snapshot.link else {
        return plan;
    };
    let mut writes = Writes::default();

    // Write-back: the referral names its Google record in externalReferenceId — unless it
    // already names one of the linked records, or another Google record (never overwritten:
    // a conflict for a person).
    let google_ref = link.lead_name.as_ref().or(link.opportunity_name.as_ref());
    if let Some(name) = google_ref {
        let linked = [link.lead_name.as_deref(), link.opportunity_name.as_deref()];
        let current = r.external_reference_id.as_deref();
        write_back(current, &linked, name, closed, &mut writes, &mut plan);
    }

    if let Some(opp) = &snapshot.opportunity {
        sync_opportunity(snapshot, opp, policy, &mut writes, &mut plan);
        if !writes.g_mask.is_empty() && !blocked(PATCH_OPPORTUNITY) {
            plan.actions.push(Action::PatchOpportunity {
                name: opp.name.clone(),
                body: Value::Object(std::mem::take(&mut writes.g_body)),
                mask: std::mem::take(&mut writes.g_mask),
                base_after: writes.g_base,
            });
        }
    }

    if !writes.ms_ops.is_empty() && !closed && !blocked(PATCH_REFERRAL) {
        plan.actions.push(Action::PatchReferral {
            ops: writes.ms_ops,
            base_after: writes.ms_base,
        });
    }
    plan
}

/// The write-back rule: the referral names its Google record `name` in externalReferenceId —
/// unless `current` already names one of the `linked` records, or another Google record
/// (never overwritten: a conflict for a person), or the referral is closed.
fn write_back(
    current: Option<&str>,
    linked: &[Option<&str>],
    name: &str,
    closed: bool,
    writes: &mut Writes,
    plan: &mut Plan,
) {
    let current = current.map(str::trim).filter(|c| !c.is_empty());
    match current {
        Some(c) if linked.contains(&Some(c)) => {}
        Some(c) if is_google_name(c) => plan.conflicts.push(Conflict {
            field: "externalReferenceId",
            microsoft: c.to_string(),
            google: name.to_string(),
            base: show::<String>(None),
        }),
        _ if !closed => writes
            .ms_ops
            .push(PatchOp::replace("/externalReferenceId", name)),
        _ => {}
    }
}

/// What a referral the lead `lead_name` was just created for gets planned: what [`reconcile`]
/// makes of a snapshot linked to that lead alone (no opportunity yet, so no field sync) — the
/// write-back, or its conflict — from the three inputs that decide it: the referral's
/// `reference` (externalReferenceId), whether it is `closed`, and whether a patch of it is
/// `patch_blocked` (one open, dead or quarantined).
pub(crate) fn after_create(
    lead_name: &str,
    reference: Option<&str>,
    closed: bool,
    patch_blocked: bool,
) -> Plan {
    let mut plan = Plan::default();
    let mut writes = Writes::default();
    write_back(
        reference,
        &[Some(lead_name)],
        lead_name,
        closed,
        &mut writes,
        &mut plan,
    );
    if !writes.ms_ops.is_empty() && !closed && !patch_blocked {
        plan.actions.push(Action::PatchReferral {
            ops: writes.ms_ops,
            base_after: writes.ms_base,
        });
    }
    plan
}

/// The writes one referral's plan collects before they become actions.
#[derive(Default)]
struct Writes {
    ms_ops: Vec<PatchOp>,
    ms_base: BaseUpdate,
    g_body: Map<String, Value>,
    g_mask: Vec<String>,
    g_base: BaseUpdate,
}

impl Writes {
    fn google(&mut self, field: &str, value: Value) {
        self.g_body.insert(field.into(), value);
        self.g_mask.push(field.into());
    }
}

/// Status both ways, then (while the deal is open on both sides) the field sync.
fn sync_opportunity(
    snapshot: &SnapshotRow,
    opp: &crate::google::Opportunity,
    policy: &Policy,
    writes: &mut Writes,
    plan: &mut Plan,
) {
    let r = &snapshot.referral.referral;
    let closed = r.status == Some(ReferralStatus::Closed);
    let stage = opp.sales_stage.as_deref().unwrap_or("");
    let opp_final = policy.final_stages().iter().any(|s| s == stage);
    let lost = policy.lost_stages.iter().any(|s| s == stage);
    let won = policy.won_stages.iter().any(|s| s == stage);

    if !closed && (lost || won) {
        // Google closed the deal: close the referral, and sync no fields into it.
        let (substatus, verb) = if won {
            ("Won", "Won")
        } else {
            ("Lost", "Closed lost")
        };
        writes.ms_ops.push(PatchOp::replace("/status", "Closed"));
        writes
            .ms_ops
            .push(PatchOp::replace("/substatus", substatus));
        writes.ms_ops.push(PatchOp::replace(
            "/statusReason",
            format!("{verb} in Google Cloud opportunity {}", opp.name),
        ));
    } else if closed {
        let ms_lost = matches!(
            r.substatus,
            Some(
                ReferralSubstatus::Declined | ReferralSubstatus::Lost | ReferralSubstatus::Expired
            )
        );
        if ms_lost && !opp_final && policy.close_google_on_microsoft_close {
            writes.google("salesStage", json!(CLOSED_LOST));
        }
    } else if !opp_final {
        if opp.external_system_id.as_deref() != Some(r.id.as_str()) {
            writes.google("externalSystemId", json!(r.id));
        }
        sync_deal_value(snapshot, opp, policy, writes, plan);
        sync_close_date(snapshot, opp, policy, writes, plan);
    }
}

/// One synced field pair: its values on both sides and in the base, and how each side
/// writes it.
struct FieldPair<T> {
    /// The name conflicts and alerts use (Microsoft's).
    name: &'static str,
    microsoft: Option<T>,
    google: Option<T>,
    base: Option<T>,
    eq: fn(&T, &T) -> bool,
    google_field: &'static str,
    google_value: fn(T) -> Value,
    microsoft_path: &'static str,
    microsoft_value: fn(T) -> Value,
    /// Where the field lives in the base.
    base_slot: fn(&mut BaseUpdate) -> &mut Option<Option<T>>,
}

/// Microsoft `details.dealValue` ↔ Google `dealSize`, three-way against the base.
fn sync_deal_value(
    snapshot: &SnapshotRow,
    opp: &crate::google::Opportunity,
    policy: &Policy,
    writes: &mut Writes,
    plan: &mut Plan,
) {
    let details = snapshot
        .referral
        .referral
        .details
        .clone()
        .unwrap_or_default();
    let pair = FieldPair {
        name: "dealValue",
        microsoft: details.deal_value,
        google: opp.deal_size,
        base: snapshot.base.and_then(|b| b.deal_value),
        eq: money_eq,
        google_field: "dealSize",
        google_value: |v| json!(v),
        microsoft_path: "/details/dealValue",
        microsoft_value: |v| json!(v),
        base_slot: |b| &mut b.deal_value,
    };
    sync_field(pair, snapshot.base.is_some(), policy, writes, plan);
}

/// Microsoft `details.closingDateTime` (its date) ↔ Google `closeDate`.
fn sync_close_date(
    snapshot: &SnapshotRow,
    opp: &crate::google::Opportunity,
    policy: &Policy,
    writes: &mut Writes,
    plan: &mut Plan,
) {
    let details = snapshot
        .referral
        .referral
        .details
        .clone()
        .unwrap_or_default();
    let pair = FieldPair {
        name: "closingDateTime",
        microsoft: details.closing_date_time.map(|t| t.date_naive()),
        google: opp.close_date,
        base: snapshot.base.and_then(|b| b.close_date),
        eq: |a: &NaiveDate, b: &NaiveDate| a == b,
        google_field: "closeDate",
        google_value: crate::google::GoogleDate::json,
        microsoft_path: "/details/closingDateTime",
        microsoft_value: |d| json!(format!("{d}T00:00:00Z")),
        base_slot: |b| &mut b.close_date,
    };
    sync_field(pair, snapshot.base.is_some(), policy, writes, plan);
}

/// The three-way merge of one field pair, into writes, a conflict or an agreed base.
fn sync_field<T: Copy + std::fmt::Display>(
    pair: FieldPair<T>,
    has_base: bool,
    policy: &Policy,
    writes: &mut Writes,
    plan: &mut Plan,
) {
    match merge(
        pair.microsoft,
        pair.google,
        pair.base,
        pair.eq,
        policy.conflict,
    ) {
        Merge::Agreed(v) => {
            if !has_base || !opt_eq(pair.base, v, pair.eq) {
                *(pair.base_slot)(&mut plan.agreed) = Some(v);
            }
        }
        Merge::WriteGoogle(v) => {
            writes.google(pair.google_field, (pair.google_value)(v));
            *(pair.base_slot)(&mut writes.g_base) = Some(Some(v));
        }
        Merge::WriteMicrosoft(v) => {
            writes.ms_ops.push(PatchOp::replace(
                pair.microsoft_path,
                (pair.microsoft_value)(v),
            ));
            *(pair.base_slot)(&mut writes.ms_base) = Some(Some(v));
        }
        Merge::Conflict => plan.conflicts.push(Conflict {
            field: pair.name,
            microsoft: show(pair.microsoft),
            google: show(pair.google),
            base: show(pair.base),
        }),
        Merge::Nothing => {}
    }
}

fn forward_chosen(snapshot: &SnapshotRow, rules: &ForwardConfig) -> bool {
    let r = &snapshot.referral.referral;
    if !rules.enabled || r.status != Some(ReferralStatus::New) {
        return false;
    }
    if r.direction.as_ref().map(|d| d.as_str()) != Some("Incoming") {
        return false;
    }
    let substatus = r.substatus.as_ref().map(|s| s.as_str()).unwrap_or("");
    if !rules.substatuses.iter().any(|s| s == substatus) {
        return false;
    }
    if !rules.qualifications.is_empty()
        && !rules
            .qualifications
            .iter()
            .any(|q| Some(q.as_str()) == r.qualification.as_deref())
    {
        return false;
    }
    if !rules.countries.is_empty()
        && !rules.countries.iter().any(|c| {
            r.customer_country()
                .is_some_and(|rc| rc.eq_ignore_ascii_case(c))
        })
    {
        return false;
    }
    let value = r.details.as_ref().and_then(|d| d.deal_value).unwrap_or(0.0);
    value >= rules.min_deal_value
}

#[derive(Debug, PartialEq)]
enum Merge<T> {
    /// Both sides hold this value.
    Agreed(Option<T>),
    WriteGoogle(T),
    WriteMicrosoft(T),
    Conflict,
    /// The winning side has no value: nothing is cleared on the other side.
    Nothing,
}

/// Three-way merge of one field: a side that changed since the base wins; both changed to
/// different values is a conflict, settled by the policy (manual = no write).
fn merge<T: Copy>(
    microsoft: Option<T>,
    google: Option<T>,
    base: Option<T>,
    eq: impl Fn(&T, &T) -> bool,
    policy: ConflictPolicy,
) -> Merge<T> {
    if opt_eq(microsoft, google, &eq) {
        return Merge::Agreed(microsoft);
    }
    let ms_changed = !opt_eq(microsoft, base, &eq);
    let g_changed = !opt_eq(google, base, &eq);
    let microsoft_wins = match (ms_changed, g_changed) {
        (true, false) => true,
        (false, true) => false,
        _ => match policy {
            ConflictPolicy::Microsoft => true,
            ConflictPolicy::Google => false,
            ConflictPolicy::Manual => return Merge::Conflict,
        },
    };
    match (microsoft_wins, microsoft, google) {
        (true, Some(v), _) => Merge::WriteGoogle(v),
        (false, _, Some(v)) => Merge::WriteMicrosoft(v),
        _ => Merge::Nothing,
    }
}

fn opt_eq<T>(a: Option<T>, b: Option<T>, eq: impl Fn(&T, &T) -> bool) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => eq(&x, &y),
        (None, None) => true,
        _ => false,
    }
}

/// Money compares to the cent, so float noise never causes a write.
fn money_eq(a: &f64, b: &f64) -> bool {
    (a * 100.0).round() == (b * 100.0).round()
}

fn show<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "(none)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::google::Opportunity;
    use crate::microsoft::ParsedReferral;
    use crate::store::google::{Base, Link};

    const LEAD: &str = "partners/1/leads/7";
    const OPP: &str = "partners/1/opportunities/42";

    fn policy(conflict: ConflictPolicy) -> Policy {
        Policy {
            partner_id: "1".into(),
            conflict,
            lost_stages: vec![CLOSED_LOST.into()],
            won_stages: vec!["SALES_STAGE_MIGRATION_IMPLEMENTATION".into()],
            close_google_on_microsoft_close: true,
            forward: ForwardConfig::default(),
            lead: GoogleLeadConfig {
                submitter_email: Some("s@p.example".into()),
                product_family: Some("GOOGLE_CLOUD_PLATFORM".into()),
                ..GoogleLeadConfig::default()
            },
        }
    }

    fn referral(
        status: &str,
        substatus: &str,
        ext: Option<&str>,
        value: f64,
        close: &str,
    ) -> ParsedReferral {
        ParsedReferral::from_value(json!({
            "id": "r1", "createdDateTime": "2026-11-10T00:00:00Z", "status": status,
            "substatus": substatus, "direction": "Incoming", "qualification": "SalesQualified",
            "externalReferenceId": ext, "name": "Deal",
            "customerProfile": {"name": "Fabrikam", "address": {"country": "US"}},
            "details": {"dealValue": value, "currency": "USD", "closingDateTime": close}
        }))
        .unwrap()
    }

    fn opp(stage: &str, size: f64, close: (i32, u32, u32), ext: &str) -> Opportunity {
        Opportunity::from_value(&json!({
            "name": OPP, "salesStage": stage, "dealSize": size, "externalSystemId": ext,
            "closeDate": {"year": close.0, "month": close.1, "day": close.2}
        }))
        .unwrap()
    }

    fn base(value: f64, close: (i32, u32, u32)) -> Option<Base> {
        Some(Base {
            deal_value: Some(value),
            close_date: NaiveDate::from_ymd_opt(close.0, close.1, close.2),
        })
    }

    fn linked(r: ParsedReferral, o: Option<Opportunity>, b: Option<Base>) -> SnapshotRow {
        SnapshotRow {
            referral: r,
            link: Some(Link {
                referral_id: "r1".into(),
                lead_name: Some(LEAD.into()),
                opportunity_name: o.as_ref().map(|o| o.name.clone()),
            }),
            opportunity: o,
            base: b,
            create_exists: true,
            blocked_kinds: vec![],
        }
    }

    fn unlinked(r: ParsedReferral) -> SnapshotRow {
        SnapshotRow {
            referral: r,
            link: None,
            opportunity: None,
            base: None,
            create_exists: false,
            blocked_kinds: vec![],
        }
    }

    const CLOSE: &str = "2027-02-28T00:00:00Z";
    const D: (i32, u32, u32) = (2027, 2, 28);

    fn plan(s: &SnapshotRow, c: ConflictPolicy) -> Plan {
        reconcile(s, &policy(c), Utc::now())
    }

    #[test]
    fn forward_creates_one_lead_for_a_new_pending_referral() {
        let p = plan(
            &unlinked(referral("New", "Pending", None, 100.0, CLOSE)),
            ConflictPolicy::Manual,
        );
        assert_eq!(p.actions.len(), 1);
        let Action::CreateLead { lead } = &p.actions[0] else {
            panic!("{p:?}")
        };
        assert_eq!(lead["externalSystemId"], "r1");
    }

    #[test]
    fn forward_skips_what_the_rules_or_history_exclude() {
        let cases = [
            (
                "Received is not forwarded by default",
                referral("New", "Received", None, 100.0, CLOSE),
                false,
            ),
            (
                "Active is not New",
                referral("Active", "Accepted", None, 100.0, CLOSE),
                false,
            ),
            (
                "Closed is never forwarded",
                referral("Closed", "Declined", None, 100.0, CLOSE),
                false,
            ),
        ];
        for (why, r, create_exists) in cases {
            let mut s = unlinked(r);
            s.create_exists = create_exists;
            assert!(plan(&s, ConflictPolicy::Manual).actions.is_empty(), "{why}");
        }
        let mut s = unlinked(referral("New", "Pending", None, 100.0, CLOSE));
        s.create_exists = true;
        assert!(
            plan(&s, ConflictPolicy::Manual).actions.is_empty(),
            "a create already exists"
        );

        let mut pol = policy(ConflictPolicy::Manual);
        pol.forward.min_deal_value = 1000.0;
        let s = unlinked(referral("New", "Pending", None, 100.0, CLOSE));
        assert!(
            reconcile(&s, &pol, Utc::now()).actions.is_empty(),
            "below the minimum value"
        );
        let mut pol = policy(ConflictPolicy::Manual);
        pol.forward.countries = vec!["FR".into()];
        assert!(
            reconcile(&s, &pol, Utc::now()).actions.is_empty(),
            "other country"
        );
        pol.forward.countries = vec!["us".into()];
        assert_eq!(
            reconcile(&s, &pol, Utc::now()).actions.len(),
            1,
            "country match ignores case"
        );
        let mut pol = policy(ConflictPolicy::Manual);
        pol.forward.qualifications = vec!["Direct".into()];
        assert!(
            reconcile(&s, &pol, Utc::now()).actions.is_empty(),
            "other qualification"
        );
    }

    #[test]
    fn forward_reports_a_referral_that_cannot_make_a_lead() {
        let mut pol = policy(ConflictPolicy::Manual);
        pol.lead.product_family = None;
        let p = reconcile(
            &unlinked(referral("New", "Pending", None, 1.0, CLOSE)),
            &pol,
            Utc::now(),
        );
        assert!(p.actions.is_empty());
        assert!(p.forward_blocked.unwrap().contains("product family"));
    }

    #[test]
    fn an_unlinked_referral_that_names_our_record_is_adopted_never_created() {
        for (status, substatus, name) in [
            ("New", "Pending", LEAD),
            ("Active", "Accepted", OPP),
            ("New", "Received", LEAD),
        ] {
            let mut s = unlinked(referral(status, substatus, Some(name), 100.0, CLOSE));
            for create_exists in [false, true] {
                s.create_exists = create_exists;
                assert_eq!(
                    plan(&s, ConflictPolicy::Manual).actions,
                    vec![Action::AdoptLink { name: name.into() }],
                    "{status}/{substatus} names {name} (create exists: {create_exists})"
                );
            }
        }
        // Another partner's record: no create over it, and a reason for a person.
        let s = unlinked(referral(
            "New",
            "Pending",
            Some("partners/999/leads/1"),
            100.0,
            CLOSE,
        ));
        let p = plan(&s, ConflictPolicy::Manual);
        assert!(p.actions.is_empty(), "{p:?}");
        assert!(p.forward_blocked.unwrap().contains("another partner"));
        // Some other system's reference is not a Google name: the lead is created as before.
        let s = unlinked(referral("New", "Pending", Some("CRM-77"), 100.0, CLOSE));
        assert!(matches!(
            plan(&s, ConflictPolicy::Manual).actions[..],
            [Action::CreateLead { .. }]
        ));
    }

    #[test]
    fn write_back_never_overwrites_another_google_name() {
        let other = "partners/1/leads/99";
        let s = linked(
            referral("New", "Pending", Some(other), 100.0, CLOSE),
            None,
            None,
        );
        let p = plan(&s, ConflictPolicy::Microsoft);
        assert!(p.actions.is_empty(), "{p:?}");
        assert_eq!(p.conflicts[0].field, "externalReferenceId");
        assert_eq!(p.conflicts[0].microsoft, other);
        // The linked opportunity's name is as good as the lead's.
        let s = linked(
            referral("Active", "Accepted", Some(OPP), 100.0, CLOSE),
            Some(opp("SALES_STAGE_QUALIFY", 100.0, D, "r1")),
            base(100.0, D),
        );
        assert_eq!(plan(&s, ConflictPolicy::Manual), Plan::default());
        // A non-Google value is replaced as before.
        let s = linked(
            referral("New", "Pending", Some("CRM-77"), 100.0, CLOSE),
            None,
            None,
        );
        assert!(matches!(
            &plan(&s, ConflictPolicy::Manual).actions[..],
            [Action::PatchReferral { ops, .. }] if ops[0].value == LEAD
        ));
    }

    #[test]
    fn write_back_sets_the_lead_name_once() {
        let s = linked(referral("New", "Pending", None, 100.0, CLOSE), None, None);
        let p = plan(&s, ConflictPolicy::Manual);
        assert_eq!(
            p.actions,
            vec![Action::PatchReferral {
                ops: vec![PatchOp::replace("/externalReferenceId", LEAD)],
                base_after: BaseUpdate::default()
            }]
        );
        let done = linked(
            referral("New", "Pending", Some(LEAD), 100.0, CLOSE),
            None,
            None,
        );
        assert_eq!(
            plan(&done, ConflictPolicy::Manual),
            Plan::default(),
            "value already there"
        );
        let mut queued = s.clone();
        queued.blocked_kinds = vec![PATCH_REFERRAL.into()];
        assert!(
            plan(&queued, ConflictPolicy::Manual).actions.is_empty(),
            "already queued"
        );
    }

    #[test]
    fn nothing_changed_means_no_write() {
        let s = linked(
            referral("Active", "Accepted", Some(LEAD), 100.0, CLOSE),
            Some(opp("SALES_STAGE_QUALIFY", 100.0, D, "r1")),
            base(100.0, D),
        );
        assert_eq!(plan(&s, ConflictPolicy::Manual), Plan::default());
    }

    #[test]
    fn first_sync_after_linking_agrees_or_copies_the_side_that_has_a_value() {
        // Same values, no base: record the base, write nothing.
        let s = linked(
            referral("Active", "Accepted", Some(LEAD), 100.0, CLOSE),
            Some(opp("SALES_STAGE_QUALIFY", 100.0, D, "r1")),
            None,
        );
        let p = plan(&s, ConflictPolicy::Manual);
        assert!(p.actions.is_empty());
        assert_eq!(p.agreed.deal_value, Some(Some(100.0)));
        // Different values, no base: both "changed" — a conflict under manual, the policy
        // side under the others.
        let s = linked(
            referral("Active", "Accepted", Some(LEAD), 100.0, CLOSE),
            Some(opp("SALES_STAGE_QUALIFY", 250.0, D, "r1")),
            None,
        );
        assert_eq!(
            plan(&s, ConflictPolicy::Manual).conflicts[0].field,
            "dealValue"
        );
        assert!(plan(&s, ConflictPolicy::Manual).actions.is_empty());
        let ms = plan(&s, ConflictPolicy::Microsoft);
        assert!(
            matches!(&ms.actions[0], Action::PatchOpportunity { mask, body, .. }
            if mask == &vec!["dealSize".to_string()] && body["dealSize"] == json!(100.0))
        );
        let g = plan(&s, ConflictPolicy::Google);
        assert!(matches!(&g.actions[0], Action::PatchReferral { ops, .. }
            if ops == &vec![PatchOp::replace("/details/dealValue", 250.0)]));
    }

    #[test]
    fn the_side_that_changed_wins() {
        // Microsoft changed the deal value: Google gets dealSize only.
        let s = linked(
            referral("Active", "Accepted", Some(LEAD), 150.0, CLOSE),
            Some(opp("SALES_STAGE_QUALIFY", 100.0, D, "r1")),
            base(100.0, D),
        );
        let p = plan(&s, ConflictPolicy::Manual);
        assert_eq!(
            p.actions,
            vec![Action::PatchOpportunity {
                name: OPP.into(),
                body: json!({"dealSize": 150.0}),
                mask: vec!["dealSize".into()],
                base_after: BaseUpdate {
                    deal_value: Some(Some(150.0)),
                    close_date: None
                },
            }]
        );
        // Google moved the close date: Microsoft gets closingDateTime only.
        let s = linked(
            referral("Active", "Accepted", Some(LEAD), 100.0, CLOSE),
            Some(opp("SALES_STAGE_QUALIFY", 100.0, (2027, 3, 31), "r1")),
            base(100.0, D),
        );
        let p = plan(&s, ConflictPolicy::Manual);
        assert_eq!(
            p.actions,
            vec![Action::PatchReferral {
                ops: vec![PatchOp::replace(
                    "/details/closingDateTime",
                    "2027-03-31T00:00:00Z"
                )],
                base_after: BaseUpdate {
                    deal_value: None,
                    close_date: Some(NaiveDate::from_ymd_opt(2027, 3, 31))
                },
            }]
        );
    }

    #[test]
    fn both_changed_is_a_conflict_settled_by_policy() {
        let s = linked(
            referral("Active", "Accepted", Some(LEAD), 150.0, CLOSE),
            Some(opp("SALES_STAGE_QUALIFY", 175.0, D, "r1")),
            base(100.0, D),
        );
        let manual = plan(&s, ConflictPolicy::Manual);
        assert!(manual.actions.is_empty(), "manual writes nothing");
        assert_eq!(
            manual.conflicts,
            vec![Conflict {
                field: "dealValue",
                microsoft: "150".into(),
                google: "175".into(),
                base: "100".into()
            }]
        );
        assert!(matches!(
            &plan(&s, ConflictPolicy::Microsoft).actions[0],
            Action::PatchOpportunity { .. }
        ));
        assert!(matches!(
            &plan(&s, ConflictPolicy::Google).actions[0],
            Action::PatchReferral { .. }
        ));
    }

    #[test]
    fn the_opportunity_external_id_is_kept_equal_to_the_referral_id() {
        let s = linked(
            referral("Active", "Accepted", Some(LEAD), 100.0, CLOSE),
            Some(opp("SALES_STAGE_QUALIFY", 100.0, D, "")),
            base(100.0, D),
        );
        let p = plan(&s, ConflictPolicy::Manual);
        assert!(
            matches!(&p.actions[0], Action::PatchOpportunity { mask, body, .. }
            if mask == &vec!["externalSystemId".to_string()] && body["externalSystemId"] == "r1")
        );
    }

    #[test]
    fn a_google_lost_or_won_stage_closes_the_referral() {
        let s = linked(
            referral("Active", "Accepted", Some(LEAD), 100.0, CLOSE),
            Some(opp(CLOSED_LOST, 999.0, D, "r1")),
            base(100.0, D),
        );
        let p = plan(&s, ConflictPolicy::Manual);
        let Action::PatchReferral { ops, .. } = &p.actions[0] else {
            panic!("{p:?}")
        };
        assert_eq!(ops[0], PatchOp::replace("/status", "Closed"));
        assert_eq!(ops[1], PatchOp::replace("/substatus", "Lost"));
        assert!(ops[2].value.as_str().unwrap().contains(OPP));
        assert_eq!(
            p.actions.len(),
            1,
            "no field sync into a referral being closed"
        );
        let s = linked(
            referral("Active", "Accepted", Some(LEAD), 100.0, CLOSE),
            Some(opp("SALES_STAGE_MIGRATION_IMPLEMENTATION", 100.0, D, "r1")),
            base(100.0, D),
        );
        let Action::PatchReferral { ops, .. } = &plan(&s, ConflictPolicy::Manual).actions[0] else {
            panic!()
        };
        assert_eq!(ops[1], PatchOp::replace("/substatus", "Won"));
    }

    #[test]
    fn a_closed_referral_is_never_written_and_closes_the_open_opportunity() {
        for substatus in ["Declined", "Lost", "Expired"] {
            let s = linked(
                referral("Closed", substatus, None, 150.0, CLOSE),
                Some(opp("SALES_STAGE_QUALIFY", 100.0, D, "r1")),
                base(100.0, D),
            );
            let p = plan(&s, ConflictPolicy::Microsoft);
            assert_eq!(
                p.actions,
                vec![Action::PatchOpportunity {
                    name: OPP.into(),
                    body: json!({"salesStage": CLOSED_LOST}),
                    mask: vec!["salesStage".into()],
                    base_after: BaseUpdate::default(),
                }],
                "{substatus}: no write-back, no field sync, just close Google"
            );
        }
        let won = linked(
            referral("Closed", "Won", None, 150.0, CLOSE),
            Some(opp("SALES_STAGE_QUALIFY", 100.0, D, "r1")),
            base(100.0, D),
        );
        assert!(plan(&won, ConflictPolicy::Manual).actions.is_empty());
        let mut off = policy(ConflictPolicy::Manual);
        off.close_google_on_microsoft_close = false;
        let s = linked(
            referral("Closed", "Declined", None, 150.0, CLOSE),
            Some(opp("SALES_STAGE_QUALIFY", 100.0, D, "r1")),
            None,
        );
        assert!(reconcile(&s, &off, Utc::now()).actions.is_empty());
        let already = linked(
            referral("Closed", "Lost", None, 150.0, CLOSE),
            Some(opp(CLOSED_LOST, 100.0, D, "r1")),
            None,
        );
        assert!(plan(&already, ConflictPolicy::Manual).actions.is_empty());
    }

    #[test]
    fn money_is_compared_to_the_cent() {
        assert!(money_eq(&100.0, &100.004));
        assert!(!money_eq(&100.0, &100.01));
        let s = linked(
            referral("Active", "Accepted", Some(LEAD), 100.001, CLOSE),
            Some(opp("SALES_STAGE_QUALIFY", 100.0, D, "r1")),
            base(100.0, D),
        );
        assert_eq!(plan(&s, ConflictPolicy::Manual), Plan::default());
    }

    /// Issue 26: the plan made right after a create, from three columns, is the one the
    /// planner makes of the whole snapshot.
    #[test]
    fn after_create_plans_what_reconcile_plans() {
        let references = [
            None,
            Some(""),
            Some(LEAD),
            Some("partners/1/leads/99"),
            Some("CRM-77"),
        ];
        for reference in references {
            for (status, substatus) in [("New", "Pending"), ("Closed", "Declined")] {
                for blocked in [false, true] {
                    let mut s = linked(
                        referral(status, substatus, reference, 100.0, CLOSE),
                        None,
                        None,
                    );
                    if blocked {
                        s.blocked_kinds = vec![PATCH_REFERRAL.into()];
                    }
                    assert_eq!(
                        after_create(LEAD, reference, status == "Closed", blocked),
                        plan(&s, ConflictPolicy::Manual),
                        "{reference:?} {status} blocked={blocked}"
                    );
                }
            }
        }
    }
}
