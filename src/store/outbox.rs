//! The durable outbox of remote writes and the audit log. Actions are inserted in the same
//! transaction as the state that produced them; the unique indexes of migration 0002 make
//! "at most one lead create per referral" a database rule, not just a code path.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use super::StoreError;
use crate::timefmt::{db_timestamp, parse_timestamp};

pub(crate) const CREATE_LEAD: &str = "create_lead";
pub(crate) const PATCH_REFERRAL: &str = "patch_referral";
pub(crate) const PATCH_OPPORTUNITY: &str = "patch_opportunity";
/// Accept or decline a referral ([`crate::sync::push::answer_referral`]): taken by the same
/// [`take_due_of`] as every action, ahead of the others.
pub(crate) const ANSWER_REFERRAL: &str = "answer_referral";
/// Accept an AWS engagement invitation ([`crate::sync::push::aws_accept`]): an answer, taken
/// first like [`ANSWER_REFERRAL`]; its row stays pending while the AWS task is followed.
pub(crate) const AWS_ACCEPT: &str = "aws_accept";
/// Decline an AWS engagement invitation ([`crate::sync::push::aws_decline`]): an answer.
pub(crate) const AWS_DECLINE: &str = "aws_decline";
/// Link a Google record a referral's externalReferenceId names (recovery, migration 0009).
pub(crate) const ADOPT_LINK: &str = "adopt_link";

/// Where an outbox row is in its life. The database keeps the snake_case name (a CHECK
/// constraint of migration 0002 lists them); code outside the store names the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    /// Due at `next_attempt_at` (a taker counted an attempt but has not sent it yet, too).
    Pending,
    /// Claimed by its latest taker right before its request: it may be on the wire.
    InFlight,
    Done,
    /// Failed for good: an `action_failed` alert for a person.
    Dead,
    /// A lead create whose outcome is unknown: never repeated without a person.
    Quarantined,
    /// Dropped by the operator (`outbox drop`).
    Dropped,
    /// Closed without a write (nothing left to write, re-planned, dry run).
    Superseded,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::InFlight => "in_flight",
            State::Done => "done",
            State::Dead => "dead",
            State::Quarantined => "quarantined",
            State::Dropped => "dropped",
            State::Superseded => "superseded",
        }
    }

    /// Every state, in the order of their life (and of `outbox list --state`'s help).
    pub(crate) const ALL: [State; 7] = [
        State::Pending,
        State::InFlight,
        State::Done,
        State::Dead,
        State::Quarantined,
        State::Dropped,
        State::Superseded,
    ];

    /// The state its snake_case name names (the database's text, the CLI's `--state`).
    pub(crate) fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Still to be sent, or being sent.
    pub(crate) fn is_open(self) -> bool {
        matches!(self, State::Pending | State::InFlight)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl rusqlite::types::FromSql for State {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let text = value.as_str()?;
        State::parse(text).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(format!("unknown outbox state {text:?}").into())
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct OutboxRow {
    pub(crate) id: i64,
    pub(crate) referral_id: String,
    pub(crate) kind: String,
    pub(crate) target: Option<String>,
    pub(crate) payload: Value,
    pub(crate) state: State,
    pub(crate) attempts: u32,
    pub(crate) next_attempt_at: DateTime<Utc>,
    pub(crate) last_error: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) result: Option<String>,
    pub(crate) updated_at: String,
}

const COLUMNS: &str = "id, referral_id, kind, target, payload, state, attempts, next_attempt_at,
    last_error, request_id, result, updated_at";

fn row(r: &rusqlite::Row) -> rusqlite::Result<OutboxRow> {
    let payload: String = r.get(4)?;
    let next: String = r.get(7)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        referral_id: r.get(1)?,
        kind: r.get(2)?,
        target: r.get(3)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        state: r.get(5)?,
        attempts: r.get::<_, i64>(6)? as u32,
        next_attempt_at: parse_timestamp(&next).unwrap_or_default(),
        last_error: r.get(8)?,
        request_id: r.get(9)?,
        result: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

/// Adds an action unless an equivalent one is open (or, for creates, exists at all).
/// Returns whether it was added.
pub(crate) fn enqueue(
    conn: &Connection,
    referral_id: &str,
    kind: &str,
    target: Option<&str>,
    payload: &Value,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let now = db_timestamp(now);
    let n = conn.prepare_cached(ENQUEUE)?.execute(params![
        referral_id,
        kind,
        target,
        payload.to_string(),
        now
    ])?;
    Ok(n > 0)
}

const ENQUEUE: &str = "INSERT INTO outbox (referral_id, kind, target, payload, state,
        next_attempt_at, created_at, updated_at)
    VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?5)
    ON CONFLICT DO NOTHING";

/// Which actions a taker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kinds {
    /// Every kind (the deadline lane with the Google side on).
    All,
    /// Accepts and declines only: the Google side is off, or the `accept`/`decline` command
    /// sends its own answer (never the lead creates of the queue as a side effect).
    Answers,
}

/// Takes the next due action for a free worker slot, skipping `exclude` (the ones this
/// process is running now), and counts the attempt. The row stays `pending`: a process that
/// stops before sending leaves it due, never in doubt. Only [`mark_sending`], right before the
/// request goes on the wire, moves it to `in_flight`, and only for the latest taker (the
/// claim is a compare-and-swap on `attempts`): a second taker can never also send it.
///
/// Of `kinds` only. Answers go first: a person waits on the page (or the command)
/// for each, and the referral's deadline is what the product is about; a backlog of creates
/// never holds an answer back by more than the writes already on the wire.
pub(crate) fn take_due_of(
    conn: &Connection,
    now: DateTime<Utc>,
    exclude: &[i64],
    kinds: Kinds,
) -> Result<Option<OutboxRow>, StoreError> {
    let now = db_timestamp(now);
    // One write transaction (the connection begins them IMMEDIATE): the pick and the count
    // of the attempt are one claim for any other process.
    let tx = conn.unchecked_transaction()?;
    let picked = match first_due(&tx, DUE_ANSWER, &now, exclude)? {
        Some(id) => Some(id),
        None if kinds == Kinds::All => first_due(&tx, DUE_ANY, &now, exclude)?,
        None => None,
    };
    let Some(id) = picked else {
        return Ok(None);
    };
    tx.prepare_cached(TAKE)?.execute(params![id, now])?;
    let taken = get(&tx, id)?;
    tx.commit()?;
    Ok(taken)
}

/// The claim's two lookups, each an index walk in (next_attempt_at, id) order: a due answer
/// (the partial index `outbox_answers_due`), else any due action (`outbox_due`). One ORDER BY
/// putting answers first could use neither index and sorted every due row on every claim.
/// (`INDEXED BY`: without statistics the planner would walk `outbox_due` for answers too.)
/// Each reads one row more than this process runs, and the first it does not run is taken:
/// an exclusion list in SQL (`NOT IN (json_each(...))`) built a temporary table per claim.
const DUE_ANSWER: &str = "SELECT id FROM outbox INDEXED BY outbox_answers_due
    WHERE state = 'pending'
      AND (kind = 'answer_referral' OR kind = 'aws_accept' OR kind = 'aws_decline')
      AND next_attempt_at <= ?1
    ORDER BY next_attempt_at, id LIMIT ?2";
const DUE_ANY: &str = "SELECT id FROM outbox
    WHERE state = 'pending' AND next_attempt_at <= ?1
    ORDER BY next_attempt_at, id LIMIT ?2";
/// Counts the attempt; the row stays `pending` (see [`take_due_of`]).
const TAKE: &str = "UPDATE outbox SET attempts = attempts + 1, updated_at = ?2 WHERE id = ?1";

fn first_due(
    conn: &Connection,
    sql: &str,
    now: &str,
    exclude: &[i64],
) -> Result<Option<i64>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![now, exclude.len() as i64 + 1])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        if !exclude.contains(&id) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Whether a taker may send the action it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendClaim {
    /// Moved to `in_flight` by this taker: send it.
    Won,
    /// An operator dropped it meanwhile: nothing may be sent.
    Dropped,
    /// Another taker took it after this one (its attempt is newer): that one sends.
    TakenByAnother,
    /// It reached another state meanwhile (done, dead, quarantined, superseded).
    Closed,
}

/// Moves a taken action to `in_flight` immediately before its request is sent (after the
/// rate limiter). The claim is a compare-and-swap on the attempt this taker counted in
/// [`take_due_of`]: of two takers of one row only the latest can win, so a write is sent at most
/// once whoever took it, and the loser learns why. (The executor claims with
/// [`mark_attempt_sending`]; the tests here name the row.)
#[cfg(test)]
pub(crate) fn mark_sending(
    conn: &Connection,
    row: &OutboxRow,
    now: DateTime<Utc>,
) -> Result<SendClaim, StoreError> {
    mark_attempt_sending(conn, row.id, row.attempts, false, now)
}

/// [`mark_sending`] by the row's id and the attempt its taker counted. `held`: this taker
/// moved it `in_flight` already and sends again in the same attempt (an answer decided anew
/// after a 412 re-read); it still may not when the operator dropped it meanwhile.
pub(crate) fn mark_attempt_sending(
    conn: &Connection,
    id: i64,
    attempts: u32,
    held: bool,
    now: DateTime<Utc>,
) -> Result<SendClaim, StoreError> {
    let n = conn.prepare_cached(MARK_SENDING)?.execute(params![
        id,
        attempts,
        db_timestamp(now),
        held
    ])?;
    if n == 1 {
        return Ok(SendClaim::Won);
    }
    let state: Option<State> = conn
        .query_row("SELECT state FROM outbox WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    Ok(match state {
        Some(State::Dropped) | None => SendClaim::Dropped,
        Some(State::Pending | State::InFlight) => SendClaim::TakenByAnother,
        Some(_) => SendClaim::Closed,
    })
}

const MARK_SENDING: &str = "UPDATE outbox SET state = 'in_flight', updated_at = ?3
    WHERE id = ?1 AND attempts = ?2 AND (state = 'pending' OR (?4 AND state = 'in_flight'))";

/// How many Partner Center PATCHes of this referral met a 412 in this cycle (from the audit
/// log): the first re-plans, a second waits for the next cycle.
pub(crate) fn count_412_in_cycle(
    conn: &Connection,
    cycle_id: &str,
    referral_id: &str,
) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*) FROM audit_log WHERE cycle_id = ?1 AND resource = ?2
           AND api = 'microsoft' AND method = 'PATCH' AND status_code = 412",
        )?
        .query_row(params![cycle_id, referral_id], |r| r.get::<_, i64>(0))? as u64)
}

/// Gives back a taken action that was never sent (shutdown began first): due again at once,
/// the attempt not counted.
pub(crate) fn release(conn: &Connection, id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE outbox SET attempts = MAX(attempts - 1, 0), next_attempt_at = ?2, updated_at = ?2,
            last_error = 'shutdown began before this write was sent'
         WHERE id = ?1 AND state = 'pending'",
    )?
    .execute(params![id, db_timestamp(now)])?;
    Ok(())
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub(crate) enum ActionOutcome {
    Done {
        result: Option<String>,
    },
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    Dead {
        error: String,
    },
    Quarantined {
        error: String,
    },
    /// Closed without a write: re-planned after a 412, or nothing left to write.
    Superseded {
        reason: String,
    },
}

impl ActionOutcome {
    pub(crate) fn state(&self) -> State {
        match self {
            ActionOutcome::Done { .. } => State::Done,
            ActionOutcome::Retry { .. } => State::Pending,
            ActionOutcome::Dead { .. } => State::Dead,
            ActionOutcome::Quarantined { .. } => State::Quarantined,
            ActionOutcome::Superseded { .. } => State::Superseded,
        }
    }
}

/// Records how attempt `attempts` ended: the state, the retry time, the error and the result.
/// `result` is a kind's own result text kept whatever the outcome (an answer's outcome for
/// the person who asked); without it a done row keeps [`ActionOutcome::Done`]'s. Only the
/// row's latest taker records: a taker whose row was taken again since (its attempt is
/// older) changes nothing, whatever it decided. Returns whether the row was changed.
pub(crate) fn finish(
    conn: &Connection,
    (id, attempts): (i64, u32),
    outcome: &ActionOutcome,
    result: Option<&str>,
    request_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let (next, error, done) = match outcome {
        ActionOutcome::Done { result } => (None, None, result.clone()),
        ActionOutcome::Retry { at, error } => (Some(db_timestamp(*at)), Some(error.clone()), None),
        ActionOutcome::Dead { error } | ActionOutcome::Quarantined { error } => {
            (None, Some(error.clone()), None)
        }
        ActionOutcome::Superseded { reason } => (None, Some(reason.clone()), None),
    };
    let changed = conn.prepare_cached(FINISH)?.execute(params![
        id,
        outcome.state().as_str(),
        next,
        error,
        result.map(str::to_string).or(done),
        request_id,
        db_timestamp(now),
        attempts
    ])?;
    Ok(changed == 1)
}

const FINISH: &str =
    "UPDATE outbox SET state = ?2, next_attempt_at = COALESCE(?3, next_attempt_at),
        last_error = COALESCE(?4, last_error), result = COALESCE(?5, result),
        request_id = COALESCE(?6, request_id), updated_at = ?7
    WHERE id = ?1 AND attempts = ?8";

/// At start-up: actions a stopped process left in flight. Only a request that may have been
/// on the wire is `in_flight` (see [`mark_sending`]): such a lead create may have reached
/// Google, so it is quarantined for a person; every other write is safe to repeat.
pub(crate) fn recover_in_flight(
    conn: &Connection,
    now: DateTime<Utc>,
) -> Result<(usize, usize), StoreError> {
    let now = db_timestamp(now);
    let quarantined = conn.execute(
        "UPDATE outbox SET state = 'quarantined', updated_at = ?1,
            last_error = 'the process stopped while creating this lead; it may exist in Google: link it (cosell-sync link) or retry (cosell-sync outbox retry)'
         WHERE state = 'in_flight' AND kind = 'create_lead'",
        [&now],
    )?;
    let requeued = conn.execute(
        "UPDATE outbox SET state = 'pending', next_attempt_at = ?1, updated_at = ?1
         WHERE state = 'in_flight'",
        [&now],
    )?;
    Ok((quarantined, requeued))
}

pub(crate) fn get(conn: &Connection, id: i64) -> Result<Option<OutboxRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM outbox WHERE id = ?1"))?
        .query_row([id], row)
        .optional()?)
}

/// Actions in the given states (all when empty), newest first.
pub(crate) fn list(
    conn: &Connection,
    states: &[State],
    limit: usize,
) -> Result<Vec<OutboxRow>, StoreError> {
    let states = serde_json::to_string(states).expect("states serialize");
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM outbox
         WHERE json_array_length(?1) = 0 OR state IN (SELECT value FROM json_each(?1))
         ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![states, limit as i64], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The actions about one referral, newest first.
pub(crate) fn for_referral(
    conn: &Connection,
    referral_id: &str,
    limit: usize,
) -> Result<Vec<OutboxRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM outbox WHERE referral_id = ?1 ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![referral_id, limit as i64], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn counts_by_state(conn: &Connection) -> Result<Vec<(String, String, u64)>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT kind, state, COUNT(*) FROM outbox GROUP BY 1, 2 ORDER BY 1, 2")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Why `outbox retry` or `outbox drop` left an action as it was.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActionRefused {
    #[error("no outbox action {0}")]
    NoAction(i64),
    #[error("action {id} is {state}; only dead or quarantined actions can be retried")]
    NotRetryable { id: i64, state: State },
    #[error("action {id} is {state}; it cannot be dropped")]
    NotDroppable { id: i64, state: State },
    #[error("another {kind} for referral {referral_id} is already open")]
    AlreadyOpen { kind: String, referral_id: String },
}

/// `outbox retry ID`: a dead or quarantined action goes back to pending, due now.
pub(crate) fn retry(
    conn: &Connection,
    id: i64,
    now: DateTime<Utc>,
) -> Result<Result<(), ActionRefused>, StoreError> {
    let Some(current) = get(conn, id)? else {
        return Ok(Err(ActionRefused::NoAction(id)));
    };
    if !matches!(current.state, State::Dead | State::Quarantined) {
        return Ok(Err(ActionRefused::NotRetryable {
            id,
            state: current.state,
        }));
    }
    let now = db_timestamp(now);
    let changed = conn.execute(
        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?2, updated_at = ?2
         WHERE id = ?1",
        params![id, now],
    );
    match changed {
        Ok(_) => Ok(Ok(())),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Ok(Err(ActionRefused::AlreadyOpen {
                kind: current.kind,
                referral_id: current.referral_id,
            }))
        }
        Err(e) => Err(e.into()),
    }
}

/// `outbox drop ID`: the action will not be sent. A dropped create lets the planner create
/// a lead again, so only drop a quarantined create once you know no lead exists (or after
/// `link`ing the one that does).
pub(crate) fn drop_action(
    conn: &Connection,
    id: i64,
    now: DateTime<Utc>,
) -> Result<Result<(), ActionRefused>, StoreError> {
    let Some(current) = get(conn, id)? else {
        return Ok(Err(ActionRefused::NoAction(id)));
    };
    if matches!(
        current.state,
        State::Done | State::Dropped | State::Superseded | State::InFlight
    ) {
        return Ok(Err(ActionRefused::NotDroppable {
            id,
            state: current.state,
        }));
    }
    conn.execute(
        "UPDATE outbox SET state = 'dropped', updated_at = ?2 WHERE id = ?1",
        params![id, db_timestamp(now)],
    )?;
    // What the dropped action blocked (a create, a kind of patch) may be planned again.
    super::schedule::mark_for_plan(conn, &current.referral_id, now)?;
    Ok(Ok(()))
}

/// Closes a quarantined create once the operator linked the lead that exists.
pub(crate) fn resolve_quarantined_create(
    conn: &Connection,
    referral_id: &str,
    lead: &str,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE outbox SET state = 'done', result = ?2, updated_at = ?3,
            last_error = 'resolved by link'
         WHERE referral_id = ?1 AND kind = 'create_lead' AND state IN ('quarantined', 'dead', 'pending')",
        params![referral_id, lead, db_timestamp(now)],
    )?)
}

/// One row of the audit log.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuditEntry {
    pub(crate) api: &'static str,
    pub(crate) method: &'static str,
    pub(crate) resource: String,
    pub(crate) fields: Option<String>,
    pub(crate) outcome: &'static str,
    pub(crate) status_code: Option<u16>,
    pub(crate) request_id: Option<String>,
    pub(crate) detail: Option<String>,
    /// Who asked for the write (an accept or decline); `None` for the daemon's own writes.
    pub(crate) actor: Option<String>,
}

/// The one writer of the audit log (every action kind's rows, ok or failed).
pub(crate) fn audit(
    conn: &Connection,
    entry: &AuditEntry,
    cycle_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit_log (at, cycle_id, api, method, resource, fields, outcome, status_code, request_id, detail, actor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        db_timestamp(now),
        cycle_id,
        entry.api,
        entry.method,
        entry.resource,
        entry.fields,
        entry.outcome,
        entry.status_code,
        entry.request_id,
        entry.detail,
        entry.actor
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use serde_json::json;

    /// Every kind: what the deadline lane takes with the Google side on.
    fn take_due(
        conn: &Connection,
        now: DateTime<Utc>,
        exclude: &[i64],
    ) -> Result<Option<OutboxRow>, StoreError> {
        take_due_of(conn, now, exclude, Kinds::All)
    }

    #[test]
    fn a_claim_walks_an_index_and_never_sorts_the_pending_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .call_blocking(|c| {
                for (sql, index) in [(DUE_ANSWER, "outbox_answers_due"), (DUE_ANY, "outbox_due")] {
                    let plan = crate::store::query_plan(c, sql)?;
                    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
                    assert!(plan.contains(index), "{plan}");
                }
                Ok(())
            })
            .unwrap();
    }

    /// Every action is enqueued, claimed, marked and finished: none of those statements may
    /// build a temporary b-tree each time it runs (an IN list of three or more constants in a
    /// CHECK or a partial index's predicate did, three per state change; so did the claim's
    /// exclusion list and its RETURNING clause).
    #[test]
    fn an_action_s_statements_build_no_temporary_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .call_blocking(|c| {
                let statements = [
                    ("enqueue", ENQUEUE),
                    ("due answer", DUE_ANSWER),
                    ("due action", DUE_ANY),
                    ("take", TAKE),
                    ("mark sending", MARK_SENDING),
                    ("finish", FINISH),
                ];
                for (name, sql) in statements {
                    let temporary = crate::store::opcodes(c, sql)?
                        .iter()
                        .filter(|op| *op == "OpenEphemeral")
                        .count();
                    assert_eq!(temporary, 0, "{name} opens {temporary} temporary tables");
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_referral_never_gets_two_creates_and_one_open_write_per_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let now = Utc::now();
        store
            .call_blocking(|c| {
                assert!(enqueue(c, "r1", CREATE_LEAD, None, &json!({}), now)?);
                assert!(!enqueue(c, "r1", CREATE_LEAD, None, &json!({}), now)?);
                let claimed = take_due(c, now, &[])?.expect("one due");
                assert!(take_due(c, now, &[claimed.id])?.is_none());
                let done = ActionOutcome::Done {
                    result: Some("partners/1/leads/1".into()),
                };
                let stale = (claimed.id, claimed.attempts - 1);
                assert!(!finish(c, stale, &done, None, None, now)?, "an older taker");
                assert_eq!(get(c, claimed.id)?.unwrap().state, State::Pending);
                let latest = (claimed.id, claimed.attempts);
                assert!(finish(c, latest, &done, None, None, now)?);
                // Even a finished create blocks another one.
                assert!(!enqueue(c, "r1", CREATE_LEAD, None, &json!({}), now)?);
                assert!(enqueue(c, "r1", PATCH_REFERRAL, None, &json!({}), now)?);
                assert!(!enqueue(c, "r1", PATCH_REFERRAL, None, &json!({}), now)?);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn in_flight_creates_are_quarantined_at_restart_and_patches_requeued() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let now = Utc::now();
        store
            .call_blocking(|c| {
                enqueue(c, "r1", CREATE_LEAD, None, &json!({}), now)?;
                enqueue(c, "r2", PATCH_REFERRAL, None, &json!({}), now)?;
                let first = take_due(c, now, &[])?.expect("due");
                let second = take_due(c, now, &[first.id])?.expect("due");
                assert_eq!(mark_sending(c, &first, now)?, SendClaim::Won);
                assert_eq!(mark_sending(c, &second, now)?, SendClaim::Won);
                assert_eq!(recover_in_flight(c, now)?, (1, 1));
                let quarantined = list(c, &[State::Quarantined], 10)?;
                assert_eq!(quarantined[0].referral_id, "r1");
                assert!(retry(c, quarantined[0].id, now)?.is_ok());
                assert!(drop_action(c, quarantined[0].id, now)?.is_ok());
                // Dropped: the planner may create again.
                assert!(enqueue(c, "r1", CREATE_LEAD, None, &json!({}), now)?);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn taken_but_unsent_creates_go_back_to_pending_and_are_never_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let now = Utc::now();
        store
            .call_blocking(|c| {
                for i in 0..10 {
                    enqueue(c, &format!("r{i}"), CREATE_LEAD, None, &json!({}), now)?;
                }
                // Four workers take a row each; one of them sends.
                let mut taken = Vec::new();
                let mut rows = Vec::new();
                for _ in 0..4 {
                    let row = take_due(c, now, &taken)?.expect("due");
                    taken.push(row.id);
                    rows.push(row);
                }
                assert_eq!(mark_sending(c, &rows[0], now)?, SendClaim::Won);
                // The process dies here; the next one recovers.
                assert_eq!(recover_in_flight(c, now)?, (1, 0));
                assert_eq!(list(c, &[State::Quarantined], 20)?.len(), 1);
                assert_eq!(list(c, &[State::Pending], 20)?.len(), 9);
                // A dropped row is never sent.
                let next = take_due(c, now, &[])?.expect("due");
                drop_action(c, next.id, now)?.unwrap();
                assert_eq!(mark_sending(c, &next, now)?, SendClaim::Dropped);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn of_two_takers_of_one_row_exactly_one_may_send_and_the_other_learns_why() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let now = Utc::now();
        store
            .call_blocking(|c| {
                enqueue(c, "r1", CREATE_LEAD, None, &json!({}), now)?;
                // Two executors that do not know of each other (separate exclude lists).
                let first = take_due(c, now, &[])?.expect("due");
                let second = take_due(c, now, &[])?.expect("still pending, so taken again");
                assert_eq!(first.id, second.id);
                assert_eq!(mark_sending(c, &second, now)?, SendClaim::Won);
                assert_eq!(mark_sending(c, &first, now)?, SendClaim::TakenByAnother);
                // Taken in the other order, the stale taker still cannot win.
                enqueue(c, "r2", CREATE_LEAD, None, &json!({}), now)?;
                let a = take_due(c, now, &[first.id])?.expect("due");
                let b = take_due(c, now, &[first.id])?.expect("due");
                assert_eq!(mark_sending(c, &a, now)?, SendClaim::TakenByAnother);
                assert_eq!(mark_sending(c, &b, now)?, SendClaim::Won);
                Ok(())
            })
            .unwrap();
    }
}

/// One audit row as `audit` prints it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuditRow {
    pub(crate) at: String,
    pub(crate) cycle_id: Option<String>,
    pub(crate) api: String,
    pub(crate) method: String,
    pub(crate) resource: String,
    pub(crate) fields: Option<String>,
    pub(crate) outcome: String,
    pub(crate) status_code: Option<i64>,
    pub(crate) request_id: Option<String>,
    pub(crate) detail: Option<String>,
    /// Who asked (an accept or decline); `None` for the daemon's own writes.
    pub(crate) actor: Option<String>,
}

/// Audit rows, oldest first; `referral` matches the referral id or a linked Google resource.
pub(crate) fn audit_rows(
    conn: &Connection,
    referral: Option<&str>,
    since: Option<DateTime<Utc>>,
    limit: usize,
) -> Result<Vec<AuditRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT at, cycle_id, api, method, resource, fields, outcome, status_code, request_id, detail,
                actor
         FROM audit_log a
         WHERE (?1 IS NULL OR a.resource = ?1 OR a.fields LIKE '%' || ?1 || '%'
                OR a.resource IN (SELECT lead_name FROM links WHERE referral_id = ?1
                                  UNION SELECT opportunity_name FROM links WHERE referral_id = ?1))
           AND (?2 IS NULL OR a.at >= ?2)
         ORDER BY a.id DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![referral, since.map(db_timestamp), limit as i64],
        |r| {
            Ok(AuditRow {
                at: r.get(0)?,
                cycle_id: r.get(1)?,
                api: r.get(2)?,
                method: r.get(3)?,
                resource: r.get(4)?,
                fields: r.get(5)?,
                outcome: r.get(6)?,
                status_code: r.get(7)?,
                request_id: r.get(8)?,
                detail: r.get(9)?,
                actor: r.get(10)?,
            })
        },
    )?;
    let mut out: Vec<AuditRow> = rows.collect::<Result<_, _>>()?;
    out.reverse();
    Ok(out)
}
