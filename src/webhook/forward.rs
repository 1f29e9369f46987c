//! The hand-off from a stored event to the deadline path: GET the referral → upsert → its
//! alerts → plan it → push what is due. Never a Google re-read. Events are marked processed
//! once forwarded; accepted-but-unprocessed ones (a crash after the 200, a full channel, a
//! failed attempt) are found again at start-up and by a periodic sweep.
//!
//! Running beside a cycle is safe without a lock: the outbox's unique index allows one lead
//! create per referral whoever plans it, and `claim_due` moves a row to `in_flight` atomically,
//! so a create is sent by exactly one of them.

use std::collections::HashSet;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::receiver::Accepted;
use crate::alerts::deliver::{self, AlertSettings, AlertStats};
use crate::http::{with_retry, ApiError};
use crate::store::webhook::{self as wstore, OpenEvent};
use crate::store::{google as gstore, referrals, StoreError};
use crate::sync::push::{self, PushStats};
use crate::sync::CycleContext;

/// Why a forward failed (the event stays open for another attempt, or polling).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ForwardError {
    /// Worth another attempt later (a permanent API answer, e.g. 404, is not).
    pub fn is_transient(&self) -> bool {
        match self {
            ForwardError::Api(e) => e.is_transient(),
            ForwardError::Store(_) => true,
        }
    }
}

/// What the hand-off uses, and nothing more (never the whole `App`): the store and the
/// clients of the cycle context, the alert settings, and the event retry limit. Built by the
/// app (`App::webhook_handoff`) and asked for again per event, since SIGHUP replaces the app.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// The store, the Microsoft client (with `[microsoft.retry]`), the Google side, the stop.
    pub cycle: CycleContext,
    pub alerts: AlertSettings,
    /// Dry run: alerts are recorded, not delivered.
    pub dry_run: bool,
    /// `webhook.max_attempts`: a transiently failing event is tried this often.
    pub max_attempts: u32,
}

/// What one forward did.
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    /// The referral's Google lead after the push, if it has one.
    pub lead: Option<String>,
    pub alerts: AlertStats,
    pub pushed: PushStats,
}

/// Forwards one referral along the deadline path.
pub async fn forward_referral(
    handoff: &Handoff,
    referral_id: &str,
) -> Result<Forwarded, ForwardError> {
    let ctx = &handoff.cycle;
    let microsoft = &ctx.microsoft;
    let parsed = with_retry(&ctx.pull.retry, "get referral", || {
        microsoft.get_referral(referral_id)
    })
    .await?;
    let now = Utc::now();
    ctx.store
        .call(move |c| referrals::commit_page(c, &[parsed], &[], None, now))
        .await?;
    let alerts = deliver::for_referral(
        &ctx.store,
        &handoff.alerts,
        referral_id,
        now,
        handoff.dry_run,
    )
    .await;
    let mut pushed = PushStats::default();
    if let Some(google) = &ctx.google {
        push::plan_one(&ctx.store, &google.policy, referral_id, Utc::now()).await?;
        let cycle = format!("webhook:{referral_id}");
        pushed = push::push_due(
            &ctx.store,
            microsoft,
            &ctx.pull.retry,
            google,
            &cycle,
            &ctx.stop,
        )
        .await?;
    }
    let id = referral_id.to_string();
    let lead = ctx
        .store
        .call(move |c| Ok(gstore::link(c, &id)?.and_then(|l| l.lead_name)))
        .await?;
    Ok(Forwarded {
        lead,
        alerts,
        pushed,
    })
}

/// Forwards stored events until `shutdown`: those handed over by the receiver at once, plus
/// (at start and every `sweep_interval`) every accepted event not processed yet.
/// `handoff` gives the current hand-off (it changes on SIGHUP).
pub async fn run(
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
                Some(a) => settle(&handoff(), a.referral_id.as_deref(), Some(a.event_id)).await,
                None => return,
            },
            // The first tick is immediate: the start-up replay of a crash after the 200.
            _ = sweep.tick() => replay(&handoff()).await,
        }
    }
}

/// Forwards every open event once (grouped by referral).
pub async fn replay(handoff: &Handoff) {
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
    let mut seen = HashSet::new();
    for event in open {
        match &event.referral_id {
            Some(id) if !seen.insert(id.clone()) => {}
            id => settle(handoff, id.as_deref(), Some(event.id)).await,
        }
    }
}

/// Forwards a referral's open events (all of them: one forward settles them together), or
/// marks an event about no referral (`test-created`) processed.
async fn settle(handoff: &Handoff, referral_id: Option<&str>, event_id: Option<i64>) {
    if let Err(e) = try_settle(handoff, referral_id, event_id).await {
        tracing::error!(error = %e, "cannot record a webhook event's outcome");
    }
}

async fn try_settle(
    handoff: &Handoff,
    referral_id: Option<&str>,
    event_id: Option<i64>,
) -> Result<(), StoreError> {
    let store = &handoff.cycle.store;
    let Some(referral_id) = referral_id else {
        if let Some(id) = event_id {
            store
                .call(move |c| wstore::mark_processed(c, id, None, Utc::now()))
                .await?;
        }
        return Ok(());
    };
    let id = referral_id.to_string();
    let open: Vec<OpenEvent> = store
        .call(move |c| wstore::open_for_referral(c, &id))
        .await?;
    if open.is_empty() {
        return Ok(()); // An earlier forward settled it (a repeated referral in the channel).
    }
    match forward_referral(handoff, referral_id).await {
        Ok(forwarded) => {
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
            tracing::info!(
                referral_id,
                lead = forwarded.lead.as_deref().unwrap_or("-"),
                written = forwarded.pushed.done,
                alerts = forwarded.alerts.raised,
                "webhook event forwarded"
            );
        }
        Err(e) => {
            let max = if e.is_transient() {
                handoff.max_attempts
            } else {
                1
            };
            tracing::warn!(referral_id, error = %e, "webhook event not forwarded; it is retried, and polling covers the referral anyway");
            let message = e.to_string();
            for event in open {
                let m = message.clone();
                store
                    .call(move |c| wstore::mark_attempt_failed(c, event.id, &m, max))
                    .await?;
            }
        }
    }
    Ok(())
}
