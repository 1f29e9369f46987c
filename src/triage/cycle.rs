//! One triage pass (spec §7), run by the deadline lane every cycle inside one transaction:
//! every referral awaiting an answer is decided with the current rules and its decision
//! recorded (a dry-run decision is a preview; an apply decision still held by the cap is not
//! yet an answer, so both are simply decided again next cycle). In apply mode the answering
//! decisions are queued, nearest deadline first, while the sliding hour of
//! `[triage] max_answers_per_hour` (counted from the stored log, so it holds across
//! restarts) has room; one `rule_limit` alert opens an episode of held decisions, and the
//! first pass that holds none closes it.

use chrono::{DateTime, Duration, Utc};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::facts::Facts;
use super::rules::RuleSet;
use crate::config::{Config, RuleConfig, TriageConfig, TriageMode};
use crate::store::alerts::{self as astore, Alert};
use crate::store::triage::{self as tstore, DecisionRow, HELD, QUEUED, SHOWN};
use crate::store::StoreError;
use crate::sync::answer::{Answer, Decision};

/// What a pass needs, built from the config (again on every reload).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) rules: RuleSet,
    pub(crate) mode: TriageMode,
    pub(crate) max_per_hour: u32,
    /// `[alerts] response_window`: the deadline of a referral without `expirationDateTime`.
    pub(crate) window: Duration,
}

impl Settings {
    pub(crate) fn from_config(config: &Config) -> Settings {
        let window = config.alerts.response_window.as_chrono();
        Settings::new(&config.triage, &config.rules, window)
    }

    pub(crate) fn new(triage: &TriageConfig, rules: &[RuleConfig], window: Duration) -> Settings {
        Settings {
            rules: RuleSet::from_config(rules),
            mode: triage.mode,
            max_per_hour: triage.max_answers_per_hour,
            window,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PassStats {
    /// Referrals awaiting an answer, each decided (or found undecided) once.
    pub(crate) awaiting: u64,
    /// Of them, a rule decided accept or decline.
    pub(crate) answering: u64,
    /// Rule answers queued in this pass (apply).
    pub(crate) queued: u64,
    /// Apply decisions held back by the hourly cap.
    pub(crate) held: u64,
}

/// A pass's result: its counts, and the `rule_limit` alert when an episode just began.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pass {
    pub(crate) stats: PassStats,
    pub(crate) limit_alert: Option<Alert>,
}

/// Which referrals a pass decides, and whether it may queue answers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// Every referral awaiting an answer; in apply mode, queue under the cap.
    All,
    /// A page's new referrals: recorded (so their first alerts carry the decision), never
    /// queued here — the full pass after the pull queues nearest deadline first.
    Only(&'a [String]),
}

/// Decides every awaiting referral of `scope` with the current rules (pure).
pub(crate) fn decide_all(
    conn: &Connection,
    settings: &Settings,
    only: Option<&[String]>,
    now: DateTime<Utc>,
) -> Result<Vec<DecisionRow>, StoreError> {
    let mut rows = Vec::new();
    tstore::awaiting(conn, only, |a| {
        let deadline = crate::deadline::deadline(a.created_at, a.expires_at, settings.window);
        if deadline <= now {
            return;
        }
        let facts = Facts::of_stored(&a.source, &a.raw);
        let verdict = settings.rules.decide(&facts);
        rows.push(DecisionRow {
            referral_id: a.id,
            source: facts.source.to_string(),
            rule: verdict.map(|v| v.rule.to_string()),
            decision: verdict.map(|v| v.decision.as_str().to_string()),
            reason: verdict
                .and_then(|v| v.decision.reason())
                .map(str::to_string),
            mode: settings.mode.as_str().to_string(),
            state: SHOWN.to_string(),
            deadline,
        });
    })?;
    rows.sort_by(|a, b| (a.deadline, &a.referral_id).cmp(&(b.deadline, &b.referral_id)));
    Ok(rows)
}

/// One pass, in the caller's transaction.
pub(crate) fn pass(
    conn: &Connection,
    settings: &Settings,
    scope: Scope<'_>,
    now: DateTime<Utc>,
) -> Result<Pass, StoreError> {
    let only = match scope {
        Scope::All => None,
        Scope::Only(ids) => Some(ids),
    };
    let mut rows = decide_all(conn, settings, only, now)?;
    let mut stats = PassStats {
        awaiting: rows.len() as u64,
        ..PassStats::default()
    };
    let apply = settings.mode == TriageMode::Apply;
    let mut room = match scope {
        Scope::All if apply => {
            let used = tstore::answers_in_last_hour(conn, now)?;
            u64::from(settings.max_per_hour).saturating_sub(used)
        }
        _ => 0,
    };
    // Nearest deadline first (the rows are sorted so).
    for row in rows.iter_mut() {
        let Some(decision) = row.answer() else {
            continue;
        };
        stats.answering += 1;
        if !apply {
            continue;
        }
        if room == 0 {
            row.state = HELD.to_string();
            stats.held += 1;
            continue;
        }
        let rule = row.rule.clone().unwrap_or_default();
        let verb = decision.verb();
        let outbox_id = queue_rule_answer(conn, &row.referral_id, &rule, decision, now)?;
        tstore::record_answer(conn, &row.referral_id, &rule, verb, outbox_id, now)?;
        row.state = QUEUED.to_string();
        stats.queued += 1;
        room -= 1;
    }
    tstore::replace(conn, only, &rows, now)?;
    let limit_alert = match scope {
        Scope::All => limit_episode(conn, settings, stats.held, now)?,
        Scope::Only(_) => None,
    };
    Ok(Pass { stats, limit_alert })
}

/// The one place a rule answer enters the outbox: the same queueing as `accept`, `decline`
/// and the action page ([`answers::enqueue`]: one open answer per referral, sent by the one
/// executor with `If-Match`), its actor `rule:NAME` in the audit.
fn queue_rule_answer(
    conn: &Connection,
    referral_id: &str,
    rule: &str,
    decision: Decision,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    let answer = Answer {
        decision,
        note: None,
        actor: format!("rule:{rule}"),
    };
    let (row, _added) = crate::sync::aws_answer::enqueue(conn, referral_id, &answer, now)?;
    Ok(row)
}

impl DecisionRow {
    /// The answer this decision sends in apply mode (`none` and no rule send nothing).
    fn answer(&self) -> Option<Decision> {
        match (self.decision.as_deref(), &self.reason) {
            (Some("accept"), _) => Some(Decision::Accept),
            (Some("decline"), Some(reason)) => Some(Decision::Decline {
                reason: reason.clone(),
            }),
            _ => None,
        }
    }
}

/// The health key of the `rule_limit` episode (an open one holds when it began).
const LIMIT_KEY: &str = "triage_limit";

#[derive(Debug, Serialize, Deserialize)]
struct Episode {
    since: DateTime<Utc>,
}

/// Opens an episode (and returns its one alert) when answers are held and none is open;
/// closes it when a full pass holds nothing.
fn limit_episode(
    conn: &Connection,
    settings: &Settings,
    held: u64,
    now: DateTime<Utc>,
) -> Result<Option<Alert>, StoreError> {
    let open: Option<Episode> =
        astore::get_health(conn, LIMIT_KEY)?.and_then(|v| serde_json::from_str(&v).ok());
    match (held, open) {
        (0, Some(_)) => {
            astore::set_health(conn, LIMIT_KEY, "", now)?;
            Ok(None)
        }
        (0, None) | (_, Some(_)) => Ok(None),
        (held, None) => {
            let episode = Episode { since: now };
            let text = serde_json::to_string(&episode).expect("an episode serializes");
            astore::set_health(conn, LIMIT_KEY, &text, now)?;
            let next = tstore::next_slot(conn, now)?
                .map(|t| format!(" (the next at {})", crate::timefmt::human(t)))
                .unwrap_or_default();
            let message = format!(
                "Triage rules decided {held} more answers than [triage] max_answers_per_hour = {} lets through in an hour; they wait, nearest deadline first, and are decided again each cycle{next}. `cosell-sync status` shows them; raise the cap or answer them yourself.",
                settings.max_per_hour
            );
            let id = format!("rule_limit:{}", crate::timefmt::db_timestamp(now));
            Ok(Some(Alert::general(
                id,
                "rule_limit",
                "warning",
                message,
                now,
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RuleAction, RuleConfig};
    use crate::microsoft::model::ParsedReferral;
    use crate::store::Store;

    fn rule(name: &str, countries: &[&str], action: RuleAction) -> RuleConfig {
        RuleConfig {
            countries: countries.iter().map(|c| c.to_string()).collect(),
            reason: (action == RuleAction::Decline).then(|| "Not for us".into()),
            ..RuleConfig::any(name, action)
        }
    }

    /// Rule answers (actor `rule:…`) per referral in the outbox.
    fn rule_answers(c: &Connection) -> Vec<(String, i64)> {
        let mut stmt = c
            .prepare(
                "SELECT referral_id, COUNT(*) FROM outbox WHERE kind = 'answer_referral'
                   AND json_extract(payload, '$.actor') LIKE 'rule:%' GROUP BY referral_id",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Generated: random inboxes, rule sets, modes and caps changing between passes, rule
    /// answers finishing sent or refused — no rule ever answers a referral twice, no pass
    /// queues more than the cap's room, and nothing is queued in a dry run.
    #[test]
    fn generated_passes_never_answer_a_referral_twice() {
        let countries = ["US", "FR", "GB", "DE", "CA", "AU", "IE"];
        let mut rng = fastrand::Rng::with_seed(2027);
        for round in 0..12 {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("s.db")).unwrap();
            let mut now = Utc::now();
            let n = rng.usize(1..40);
            let parsed: Vec<ParsedReferral> = (0..n)
                .map(|i| {
                    let age = Duration::hours(rng.i64(1..400));
                    let raw =
                        crate::sim::sample::referral(round * 100 + i, now, age, "New", "Pending");
                    ParsedReferral::from_value(raw).unwrap()
                })
                .collect();
            store
                .call_blocking(move |c| {
                    crate::store::referrals::commit_page(c, &parsed, &[], None, now)?;
                    Ok(())
                })
                .unwrap();
            for _ in 0..8 {
                let rules: Vec<RuleConfig> = (0..rng.usize(0..4))
                    .map(|i| {
                        let picked: Vec<&str> = (0..rng.usize(1..3))
                            .map(|_| countries[rng.usize(..countries.len())])
                            .collect();
                        let action = [RuleAction::Accept, RuleAction::Decline, RuleAction::None]
                            [rng.usize(..3)];
                        rule(&format!("r{i}"), &picked, action)
                    })
                    .collect();
                let triage = TriageConfig {
                    mode: if rng.bool() {
                        TriageMode::Apply
                    } else {
                        TriageMode::DryRun
                    },
                    max_answers_per_hour: rng.u32(1..6),
                };
                let settings = Settings::new(&triage, &rules, Duration::days(14));
                now += Duration::minutes(rng.i64(1..90));
                let finish = rng.bool();
                let at = now;
                let (stats, before, room) = store
                    .call_blocking(move |c| {
                        let before: i64 = rule_answers(c).iter().map(|r| r.1).sum();
                        let room = u64::from(settings.max_per_hour)
                            .saturating_sub(tstore::answers_in_last_hour(c, at)?);
                        let tx = c.transaction()?;
                        let p = pass(&tx, &settings, Scope::All, at)?;
                        tx.commit()?;
                        if finish {
                            // The executor sent some and refused others.
                            c.execute(
                                "UPDATE outbox SET state = CASE WHEN id % 2 = 0 THEN 'done' ELSE 'dead' END
                                 WHERE kind = 'answer_referral' AND state = 'pending'",
                                [],
                            )?;
                        }
                        Ok((p.stats, before, room))
                    })
                    .unwrap();
                let answers = store.call_blocking(|c| Ok(rule_answers(c))).unwrap();
                assert!(answers.iter().all(|(_, n)| *n == 1), "twice: {answers:?}");
                let after: i64 = answers.iter().map(|r| r.1).sum();
                assert_eq!((after - before) as u64, stats.queued);
                assert!(stats.queued <= room, "{stats:?} room {room}");
                if triage.mode == TriageMode::DryRun {
                    assert_eq!(stats.queued + stats.held, 0);
                }
            }
        }
    }
}
