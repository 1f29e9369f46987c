//! The webhook's producer side: a stored event's referral is fetched (GET) and committed,
//! which queues its plan; then the deadline lane is woken with "no pull needed" and this
//! waits for the tick that serves it. The lane is the one executor: it plans, pushes the
//! outbox under the one `[sync] concurrency`, and raises and delivers alerts. Never a Google
//! re-read here, never a push. Events are marked processed once their tick has run;
//! accepted-but-unprocessed ones (a crash after the 200, a full channel, a failed attempt)
//! are found again at start-up and by a periodic sweep.

use std::collections::BTreeMap;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::receiver::Accepted;
use crate::http::ApiError;
use crate::store::webhook::{self as wstore, OpenEvent};
use crate::store::{google as gstore, StoreError};
use crate::sync::pull::refresh_referral;
use crate::sync::CycleContext;
use crate::wake::DeadlineWake;

/// Why a forward failed (the event stays open for another attempt, or polling).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ForwardError {
    /// Worth another attempt later (a permanent API answer, e.g. 404, is not).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            ForwardError::Api(e) => e.is_transient(),
            ForwardError::Store(_) => true,
        }
    }
}

/// What the hand-off uses, and nothing more (never the whole `App`): the store and the
/// Microsoft client of the cycle context, the deadline lane's wake handle, and the event
/// retry limit. Built by the app (`App::webhook_handoff`) and asked for again per batch,
/// since SIGHUP replaces the app.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The store, the Microsoft client (with `[microsoft.retry]`), the stop.
    pub cycle: CycleContext,
    /// Wakes the one executor (the deadline lane) once the referrals are stored.
    pub(crate) wake: DeadlineWake,
    /// `webhook.max_attempts`: a transiently failing event is tried this often.
    pub(crate) max_attempts: u32,
}

/// GETs a referral and commits it (queuing its plan); the lane does the rest.
async fn fetch_and_commit(handoff: &Handoff, referral_id: &str) -> Result<(), ForwardError> {
    let ctx = &handoff.cycle;
    let retry = &ctx.microsoft_retry;
    refresh_referral(&ctx.store, &ctx.microsoft, retry, referral_id).await??;
    Ok(())
}

/// Forwards stored events until `shutdown`: those handed over by the receiver at once, plus
/// (at start and every `sweep_interval`) every accepted event not processed yet.
/// `handoff` gives the current hand-off (it changes on SIGHUP).
pub(crate) async fn run(
    handoff: impl Fn() -> Handoff + Send + 'static,
    every: std::time::Duration,
    mut events: mpsc::Receiver<Accepted>,
    shutdown: CancellationToken,
) {
    let mut sweep = tokio::time::interval(every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = events.recv() => match accepted {
                Some(a) => {
                    // Whatever else arrived meanwhile goes in the same batch: one wake.
                    let mut batch = vec![(a.referral_id, Some(a.event_id))];
                    while let Ok(a) = events.try_recv() {
                        batch.push((a.referral_id, Some(a.event_id)));
                    }
                    settle(&handoff(), batch, &shutdown).await;
                }
                None => return,
            },
            // The first tick is immediate: the start-up replay of a crash after the 200.
            _ = sweep.tick() => replay(&handoff(), &shutdown).await,
        }
    }
}

/// Forwards every open event once (grouped by referral).
pub(crate) async fn replay(handoff: &Handoff, shutdown: &CancellationToken) {
    let open = match handoff
        .cycle
        .store
        .call(|c| wstore::open_events(c, 10_000))
        .await
    {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "cannot read open webhook events");
            return;
        }
    };
    if !open.is_empty() {
        tracing::info!(
            events = open.len(),
            "forwarding webhook events accepted earlier"
        );
    }
    let batch = open.into_iter().map(|e| (e.referral_id, Some(e.id)));
    settle(handoff, batch.collect(), shutdown).await;
}

/// Settles a batch of events: each referral's open events (all of them: one forward settles
/// them together), or an event about no referral (`test-created`) marked processed.
async fn settle(
    handoff: &Handoff,
    batch: Vec<(Option<String>, Option<i64>)>,
    shutdown: &CancellationToken,
) {
    if let Err(e) = try_settle(handoff, batch, shutdown).await {
        tracing::error!(error = %e, "cannot record a webhook event's outcome");
    }
}

async fn try_settle(
    handoff: &Handoff,
    batch: Vec<(Option<String>, Option<i64>)>,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    let store = &handoff.cycle.store;
    let mut referrals_open: BTreeMap<String, Vec<OpenEvent>> = BTreeMap::new();
    for (referral_id, event_id) in batch {
        let Some(referral_id) = referral_id else {
            if let Some(id) = event_id {
                store
                    .call(move |c| wstore::mark_processed(c, id, None, Utc::now()))
                    .await?;
            }
            continue;
        };
        if referrals_open.contains_key(&referral_id) {
            continue;
        }
        let id = referral_id.clone();
        let open = store
            .call(move |c| wstore::open_for_referral(c, &id))
            .await?;
        // Empty: an earlier forward settled it (a repeated referral in the channel).
        if !open.is_empty() {
            referrals_open.insert(referral_id, open);
        }
    }
    let mut stored = Vec::new();
    for (referral_id, open) in referrals_open {
        match fetch_and_commit(handoff, &referral_id).await {
            Ok(()) => stored.push((referral_id, open)),
            Err(e) => record_failure(handoff, &referral_id, open, e).await?,
        }
    }
    if stored.is_empty() {
        return Ok(());
    }
    // One wake for the batch, and the tick that serves it: then the leads exist (or their
    // creates are queued for retry, which the outbox reports).
    let tick = handoff.wake.ask_without_pull();
    tokio::select! {
        _ = handoff.wake.finished_after(tick) => {}
        // Not processed: the next process replays them (a GET again, harmless).
        _ = shutdown.cancelled() => return Ok(()),
    }
    for (referral_id, open) in stored {
        mark_forwarded(store, &referral_id, open).await?;
    }
    Ok(())
}

/// Marks a referral's events processed, with the event → lead time when its lead exists.
async fn mark_forwarded(
    store: &crate::store::Store,
    referral_id: &str,
    open: Vec<OpenEvent>,
) -> Result<(), StoreError> {
    let id = referral_id.to_string();
    let lead_at = store.call(move |c| wstore::lead_created_at(c, &id)).await?;
    let now = Utc::now();
    for event in open {
        let lead_ms = lead_at
            .filter(|at| *at >= event.received_at)
            .map(|at| (at - event.received_at).num_milliseconds());
        if let Some(ms) = lead_ms {
            let elapsed = std::time::Duration::from_millis(ms.max(0) as u64);
            crate::metrics::global().webhook_event_to_lead(elapsed);
        }
        store
            .call(move |c| wstore::mark_processed(c, event.id, lead_ms, now))
            .await?;
    }
    let id = referral_id.to_string();
    let lead = store
        .call(move |c| Ok(gstore::link(c, &id)?.and_then(|l| l.lead_name)))
        .await?;
    tracing::info!(
        referral_id,
        lead = lead.as_deref().unwrap_or("-"),
        "webhook event forwarded"
    );
    Ok(())
}

/// A failed GET or commit: the events stay open for another attempt (or polling).
async fn record_failure(
    handoff: &Handoff,
    referral_id: &str,
    open: Vec<OpenEvent>,
    e: ForwardError,
) -> Result<(), StoreError> {
    let max = if e.is_transient() {
        handoff.max_attempts
    } else {
        1
    };
    tracing::warn!(referral_id, error = %e, "webhook event not forwarded; it is retried, and polling covers the referral anyway");
    let message = e.to_string();
    for event in open {
        let m = message.clone();
        handoff
            .cycle
            .store
            .call(move |c| wstore::mark_attempt_failed(c, event.id, &m, max))
            .await?;
    }
    Ok(())
}
