//! The executor: takes due rows with bounded concurrency, marks each `in_flight` right before
//! its send, dispatches by action kind, and records outcomes (retry, dead, quarantine) and audit.

use super::*;

/// What one `push_due` shares between its workers.
#[derive(Debug)]
pub(super) struct PushRun {
    /// SIGTERM: no new write starts (see [`mark_sending`]).
    pub(super) stop: CancellationToken,
}

/// Executes due actions until none is due, or until `stop` (SIGTERM): then no new action
/// starts and the running ones finish. A row is taken only when a worker slot is free to run
/// it, and marked `in_flight` only immediately before its request is sent, so a crash or a
/// stop leaves at most `concurrency` writes in doubt.
///
/// The one executor of the worker process: lead creates, write-backs and opportunity patches
/// (with the Google side on) and accepts and declines share its `[sync] concurrency` slots;
/// `kinds` narrows what it takes (the `accept`/`decline` command sends answers only).
pub(crate) async fn push_due(
    ctx: &CycleContext,
    cycle_id: &str,
    kinds: outbox::Kinds,
) -> Result<PushStats, StoreError> {
    let (store, stop) = (&ctx.store, &ctx.stop);
    let google = ctx.google.as_ref();
    // Without the Google side only answers can be sent (every other kind writes to Google
    // or follows a Google write).
    let kinds = match google {
        Some(_) => kinds,
        None => outbox::Kinds::Answers,
    };
    let concurrency = google.map_or(1, |g| g.concurrency).max(1);
    let mut stats = PushStats::default();
    let run = PushRun { stop: stop.clone() };
    let mut running = futures_util::stream::FuturesUnordered::new();
    let mut taken: Vec<i64> = Vec::new();
    loop {
        while running.len() < concurrency && !stop.is_cancelled() {
            let exclude = taken.clone();
            let Some(row) = store
                .call(move |c| outbox::take_due_of(c, Utc::now(), &exclude, kinds))
                .await?
            else {
                break;
            };
            taken.push(row.id);
            let id = row.id;
            let run = &run;
            running.push(async move {
                let outcome = match (row.kind.as_str(), google) {
                    (outbox::ANSWER_REFERRAL, _) => answer_referral::send(ctx, row).await,
                    (_, Some(google)) => {
                        let microsoft = (&ctx.microsoft, &ctx.pull.retry);
                        execute(store, microsoft, google, cycle_id, row, run).await
                    }
                    // Not taken: `kinds` is answers only without the Google side.
                    (_, None) => Ok(Outcome::Superseded {
                        reason: "the Google side is off".into(),
                    }),
                };
                (id, outcome)
            });
        }
        let Some((id, result)) = running.next().await else {
            return Ok(stats);
        };
        taken.retain(|t| *t != id);
        match result? {
            Outcome::Done { .. } => stats.done += 1,
            Outcome::Retry { .. } => stats.retried += 1,
            Outcome::Dead { .. } => stats.dead += 1,
            Outcome::Quarantined { .. } => stats.quarantined += 1,
            Outcome::Superseded { .. } => stats.superseded += 1,
        }
    }
}

pub(super) async fn count_412(
    store: &Store,
    cycle_id: &str,
    referral_id: &str,
) -> Result<u64, StoreError> {
    let (cycle, referral) = (cycle_id.to_string(), referral_id.to_string());
    store
        .call(move |c| outbox::count_412_in_cycle(c, &cycle, &referral))
        .await
}

/// Marks a taken row `in_flight` right before its send. `Some(outcome)`: do not send
/// (shutdown began, or the operator dropped the row); the outcome is already recorded.
pub(super) async fn mark_sending(
    store: &Store,
    row: &OutboxRow,
    stop: &CancellationToken,
) -> Result<Option<Outcome>, StoreError> {
    let (id, attempts, stopping) = (row.id, row.attempts, stop.is_cancelled());
    store
        .call(move |c| claim_send(c, id, attempts, stopping))
        .await
}

/// [`mark_sending`] inside a store call that already holds the connection (a send whose
/// checks read the database claims in the same call).
pub(super) fn claim_send(
    c: &rusqlite::Connection,
    id: i64,
    attempts: u32,
    stopping: bool,
) -> Result<Option<Outcome>, StoreError> {
    if stopping {
        // Not started: due again at once for the next process, the attempt not counted.
        outbox::release(c, id, Utc::now())?;
        return Ok(Some(Outcome::Retry {
            at: Utc::now(),
            error: "shutdown began before this write was sent".into(),
        }));
    }
    let reason = match outbox::mark_attempt_sending(c, id, attempts, Utc::now())? {
        outbox::SendClaim::Won => return Ok(None),
        outbox::SendClaim::Dropped => "no longer pending (dropped by the operator); not sent",
        outbox::SendClaim::TakenByAnother => {
            "taken again by a newer attempt, which sends it; not sent"
        }
        outbox::SendClaim::Closed => "closed meanwhile; not sent",
    };
    Ok(Some(Outcome::Superseded {
        reason: reason.into(),
    }))
}

pub(super) async fn execute(
    store: &Store,
    (microsoft, microsoft_retry): (&MicrosoftClient, &RetryPolicy),
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
    run: &PushRun,
) -> Result<Outcome, StoreError> {
    use tracing::Instrument;
    let span = tracing::info_span!("action", id = row.id, kind = %row.kind, referral_id = %row.referral_id);
    async move {
        let action = match decode(&row) {
            Ok(action) => action,
            Err(error) => {
                // Never guessed at, never silently closed: a person looks at it.
                let outcome = Outcome::Dead {
                    error: format!("the stored action cannot be read: {error}"),
                };
                return finish(store, row.id, outcome, None, None).await;
            }
        };
        // An adoption only reads Google: a dry run does it too (into the throw-away copy).
        if google.dry_run && !matches!(action, Action::AdoptLink { .. }) {
            return dry_run(store, row, &action).await;
        }
        match action {
            Action::CreateLead { lead } => {
                let ms = (microsoft, microsoft_retry);
                let guard = crate::sync::adopt::guard_create(store, ms, google, &row).await?;
                if let Some(outcome) = guard {
                    return Ok(outcome);
                }
                create_lead(store, google, cycle_id, row, &run.stop, lead).await
            }
            Action::AdoptLink { name } => {
                crate::sync::adopt::adopt_link(store, google, row, name).await
            }
            Action::PatchReferral { ops, base_after } => {
                let referral = (microsoft, microsoft_retry, run);
                patch_referral(store, referral, google, cycle_id, row, ops, base_after).await
            }
            Action::PatchOpportunity {
                name,
                body,
                mask,
                base_after,
            } => {
                let patch = OpportunityPatch {
                    name,
                    body,
                    mask,
                    base_after,
                };
                patch_opportunity(store, google, cycle_id, row, patch, &run.stop).await
            }
        }
    }
    .instrument(span)
    .await
}

/// Dry run: logs the write (method, path, body summary) and closes it in the throw-away copy.
pub(super) async fn dry_run(
    store: &Store,
    row: OutboxRow,
    action: &Action,
) -> Result<Outcome, StoreError> {
    let (method, path, summary) = match action {
        Action::AdoptLink { name } => ("GET", format!("/v1/{name}"), String::new()),
        Action::CreateLead { lead } => (
            "POST",
            "/v1/partners/{partner}/leads".to_string(),
            format!(
                "externalSystemId={} customer={} value={} {}",
                row.referral_id,
                lead["customer"],
                lead["partnerAnnualContractValue"],
                lead["leadCurrencyCode"].as_str().unwrap_or("")
            ),
        ),
        Action::PatchReferral { ops, .. } => (
            "PATCH",
            format!("{}/{}", crate::microsoft::REFERRALS_PATH, row.referral_id),
            serde_json::to_string(ops).unwrap_or_default(),
        ),
        Action::PatchOpportunity {
            name, body, mask, ..
        } => (
            "PATCH",
            format!("/v1/{name}?updateMask={}", mask.join(",")),
            body.to_string(),
        ),
    };
    tracing::warn!(referral_id = %row.referral_id, method, path = %path, body = %summary, "DRY RUN: would send");
    finish(
        store,
        row.id,
        Outcome::Superseded {
            reason: "dry run: not sent".into(),
        },
        None,
        None,
    )
    .await
}

/// Closes an action as done with its audit row, inside the caller's transaction (which
/// holds what else the success changes: a link, a saved copy, base values).
pub(super) fn record_done(
    tx: &rusqlite::Transaction,
    id: i64,
    result: Option<String>,
    audit: &AuditEntry,
    cycle_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    outbox::finish(
        tx,
        id,
        &Outcome::Done { result },
        audit.request_id.as_deref(),
        now,
    )?;
    outbox::audit(tx, audit, Some(cycle_id), now)?;
    Ok(())
}

/// Records the outcome (and an optional extra write in the same transaction).
pub(in crate::sync) async fn finish(
    store: &Store,
    id: i64,
    outcome: Outcome,
    request_id: Option<String>,
    audit: Option<(AuditEntry, Option<String>)>,
) -> Result<Outcome, StoreError> {
    let o = outcome.clone();
    store
        .call(move |c| {
            let tx = c.transaction()?;
            outbox::finish(&tx, id, &o, request_id.as_deref(), Utc::now())?;
            if let Some((entry, cycle)) = &audit {
                outbox::audit(&tx, entry, cycle.as_deref(), Utc::now())?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    match &outcome {
        Outcome::Dead { error } => {
            tracing::error!(action_id = id, error, "write failed for good (dead)")
        }
        Outcome::Quarantined { error } => {
            tracing::error!(action_id = id, error, "lead create quarantined")
        }
        Outcome::Retry { error, at } => {
            tracing::warn!(action_id = id, error, retry_at = %at, "write will be retried")
        }
        _ => {}
    }
    Ok(outcome)
}

/// Records a failed attempt with its audit row, in one transaction.
pub(super) async fn finish_failed(
    store: &Store,
    id: i64,
    outcome: Outcome,
    entry: AuditEntry,
    cycle_id: &str,
) -> Result<Outcome, StoreError> {
    finish(
        store,
        id,
        outcome,
        None,
        Some((entry, Some(cycle_id.to_string()))),
    )
    .await
}

/// `now + delay` that cannot overflow, whatever number a server or the config supplied.
pub(super) fn retry_at(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The failure outcome for a call that can be repeated safely.
pub(in crate::sync) fn failure(row: &OutboxRow, e: &ApiError, schedule: &Schedule) -> Outcome {
    let error = e.to_string();
    if (e.is_transient() || e.is_auth()) && row.attempts < schedule.max_attempts {
        Outcome::Retry {
            at: retry_at(Utc::now(), schedule.delay(row.attempts, e.retry_after())),
            error,
        }
    } else if e.is_transient() || e.is_auth() {
        Outcome::Dead {
            error: format!("gave up after {} attempts: {error}", row.attempts),
        }
    } else {
        Outcome::Dead { error }
    }
}

pub(super) fn failed_audit(
    api: &'static str,
    method: &'static str,
    resource: String,
    fields: Option<String>,
    e: &ApiError,
) -> AuditEntry {
    let request_id = match e {
        ApiError::Status { request_id, .. } | ApiError::Malformed { request_id, .. } => {
            request_id.clone()
        }
        _ => None,
    };
    AuditEntry {
        api,
        method,
        resource,
        fields,
        outcome: "failed",
        status_code: e.status(),
        request_id,
        detail: Some(e.to_string()),
    }
}

/// A superseded outcome: closed without a write, with why.
pub(super) async fn supersede(store: &Store, id: i64, reason: &str) -> Result<Outcome, StoreError> {
    let outcome = Outcome::Superseded {
        reason: reason.into(),
    };
    finish(store, id, outcome, None, None).await
}
