//! The hand-off from a stored event to the deadline path: GET the referral → upsert → its
//! alerts → plan it → push what is due. Never a Google re-read. Events are marked processed
//! once forwarded; accepted-but-unprocessed ones (a crash after the 200, a full channel, a
//! failed attempt) are found again at start-up and by a periodic sweep.
//!
//! Running beside a cycle is safe without a lock: the outbox's unique index allows one lead
//! create per referral whoever plans it, and `claim_due` moves a row to `in_flight` atomically,
//! so a create is sent by exactly one of them.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::receiver::Accepted;
use crate::alerts::deliver::{self, AlertStats};
use crate::app::App;
use crate::http::{with_retry, ApiError};
use crate::store::webhook::{self as wstore, OpenEvent};
use crate::store::{google as gstore, referrals, StoreError};
use crate::sync::push::{self, PushStats};

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

/// What one forward did.
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    /// The referral's Google lead after the push, if it has one.
    pub lead: Option<String>,
    pub alerts: AlertStats,
    pub pushed: PushStats,
}

/// Forwards one referral along the deadline path.
pub async fn forward_referral(app: &App, referral_id: &str) -> Result<Forwarded, ForwardError> {
    let microsoft = &app.cycle.microsoft;
    let retry = app.config.microsoft.retry.policy();
    let parsed = with_retry(&retry, "get referral", || {
        microsoft.get_referral(referral_id)
    })
    .await?;
    let now = Utc::now();
    app.store
        .call(move |c| referrals::commit_page(c, &[parsed], &[], None, now))
        .await?;
    let alerts = deliver::for_referral(
        &app.store,
        &app.alerts,
        referral_id,
        now,
        app.config.daemon.dry_run,
    )
    .await;
    let mut pushed = PushStats::default();
    if let Some(google) = &app.cycle.google {
        push::plan_one(&app.store, &google.policy, referral_id, Utc::now()).await?;
        let cycle = format!("webhook:{referral_id}");
        pushed = push::push_due(
            &app.store,
            microsoft,
            &app.cycle.pull.retry,
            google,
            &cycle,
            &app.cycle.stop,
        )
        .await?;
    }
    let id = referral_id.to_string();
    let lead = app
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
pub async fn run(
    app: impl Fn() -> Arc<App> + Send + 'static,
    mut events: mpsc::Receiver<Accepted>,
    shutdown: CancellationToken,
) {
    let every = app()
        .config
        .webhook
        .as_ref()
        .map(|w| w.sweep_interval.0)
        .unwrap_or(std::time::Duration::from_secs(30));
    let mut sweep = tokio::time::interval(every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = events.recv() => match accepted {
                Some(a) => settle(&app(), a.referral_id.as_deref(), Some(a.event_id)).await,
                None => return,
            },
            // The first tick is immediate: the start-up replay of a crash after the 200.
            _ = sweep.tick() => replay(&app()).await,
        }
    }
}

/// Forwards every open event once (grouped by referral).
pub async fn replay(app: &App) {
    let open = match app.store.call(|c| wstore::open_events(c, 10_000)).await {
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
            id => settle(app, id.as_deref(), Some(event.id)).await,
        }
    }
}

/// Forwards a referral's open events (all of them: one forward settles them together), or
/// marks an event about no referral (`test-created`) processed.
async fn settle(app: &App, referral_id: Option<&str>, event_id: Option<i64>) {
    if let Err(e) = try_settle(app, referral_id, event_id).await {
        tracing::error!(error = %e, "cannot record a webhook event's outcome");
    }
}

async fn try_settle(
    app: &App,
    referral_id: Option<&str>,
    event_id: Option<i64>,
) -> Result<(), StoreError> {
    let Some(referral_id) = referral_id else {
        if let Some(id) = event_id {
            app.store
                .call(move |c| wstore::mark_processed(c, id, None, Utc::now()))
                .await?;
        }
        return Ok(());
    };
    let id = referral_id.to_string();
    let open: Vec<OpenEvent> = app
        .store
        .call(move |c| wstore::open_for_referral(c, &id))
        .await?;
    if open.is_empty() {
        return Ok(()); // An earlier forward settled it (a repeated referral in the channel).
    }
    match forward_referral(app, referral_id).await {
        Ok(forwarded) => {
            let id = referral_id.to_string();
            let lead_at = app
                .store
                .call(move |c| wstore::lead_created_at(c, &id))
                .await?;
            let now = Utc::now();
            for event in open {
                let lead_ms = lead_at
                    .filter(|at| *at >= event.received_at)
                    .map(|at| (at - event.received_at).num_milliseconds());
                if let Some(ms) = lead_ms {
                    let elapsed = std::time::Duration::from_millis(ms.max(0) as u64);
                    crate::metrics::global().webhook_event_to_lead(elapsed);
                }
                app.store
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
                app.config.webhook.as_ref().map_or(5, |w| w.max_attempts)
            } else {
                1
            };
            tracing::warn!(referral_id, error = %e, "webhook event not forwarded; it is retried, and polling covers the referral anyway");
            let message = e.to_string();
            for event in open {
                let m = message.clone();
                app.store
                    .call(move |c| wstore::mark_attempt_failed(c, event.id, &m, max))
                    .await?;
            }
        }
    }
    Ok(())
}
