//! The HTTP receiver: plain HTTP on `webhook.listen` (TLS ends at the reverse proxy), POST on
//! `public_url`'s path. An event is verified first (a refused one gets 401, is counted, and
//! causes no Partner Center request), then stored — de-duplicated on event name + resource +
//! change time — and only then answered 200; the stored event is handed to the forwarder at
//! once over a channel. A full channel loses nothing: the forwarder's sweep finds the row.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::verify::Verifier;
use super::{Event, PartnerWebhookConfig};
use crate::store::webhook::{self as wstore, NewEvent};
use crate::store::Store;

/// An event body larger than this is not a Partner Center event.
const MAX_BODY: usize = 64 * 1024;

/// A stored event, for the forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub event_id: i64,
    pub(crate) event_name: String,
    pub(crate) referral_id: Option<String>,
}

struct Shared {
    verifier: Verifier,
    store: Store,
    events: mpsc::Sender<Accepted>,
    rejected: Arc<RejectedTally>,
}

/// Refused events waiting to be added to the database's counter: a flood of forgeries makes
/// one small write at a time, each adding all the refusals since the last, so the one writer
/// connection stays free for genuine events.
#[derive(Default)]
struct RejectedTally {
    pending: AtomicU64,
    writing: AtomicBool,
}

impl RejectedTally {
    fn add(self: &Arc<Self>, store: &Store) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.writing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (tally, store) = (self.clone(), store.clone());
        tokio::spawn(async move {
            loop {
                let n = tally.pending.swap(0, Ordering::SeqCst);
                if n > 0 {
                    if let Err(e) = store.call(move |c| wstore::reject(c, n)).await {
                        tracing::error!(error = %e, "cannot count rejected webhook events");
                    }
                    continue;
                }
                tally.writing.store(false, Ordering::SeqCst);
                // A refusal counted between the swap and the store above starts no writer of
                // its own: take it over.
                if tally.pending.load(Ordering::SeqCst) == 0
                    || tally.writing.swap(true, Ordering::SeqCst)
                {
                    return;
                }
            }
        });
    }
}

/// Why the receiver cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("webhook.ca_file: {0}")]
    Trust(#[from] super::verify::TrustError),
    #[error(transparent)]
    Bind(#[from] crate::serve::BindError),
}

/// The router alone (tests and `webhook test` serve it themselves).
pub(crate) fn router(
    config: &PartnerWebhookConfig,
    store: Store,
    events: mpsc::Sender<Accepted>,
) -> Result<Router, StartError> {
    let verifier = Verifier::new(
        config.certificate_url_prefixes.clone(),
        config.certificate_subject.clone(),
        config.ca_file.as_deref(),
    )?;
    let shared = Arc::new(Shared {
        verifier,
        store,
        events,
        rejected: Arc::default(),
    });
    Ok(Router::new()
        .route(&config.path(), post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared))
}

/// Binds `webhook.listen` and serves until `shutdown` on the daemon's server layer (tests and
/// `webhook::start`; `run` mounts [`router`] with its other listeners). Returns the bound
/// address.
pub async fn serve(
    config: &PartnerWebhookConfig,
    store: Store,
    events: mpsc::Sender<Accepted>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, StartError> {
    let app = router(config, store, events)?;
    let addr = crate::serve::serve(
        "webhook.listen",
        &config.listen,
        app,
        crate::serve::Limits::daemon(),
        shutdown,
    )
    .await?;
    listening(config, addr);
    Ok(addr)
}

/// The start-up lines about a bound receiver.
pub fn listening(config: &PartnerWebhookConfig, addr: SocketAddr) {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "webhook.listen is not a loopback address: the receiver speaks plain HTTP; put it behind a TLS reverse proxy on 127.0.0.1");
    }
    tracing::info!(%addr, path = %config.path(), "webhook receiver listening");
}

fn count(outcome: &'static str) {
    crate::metrics::global().webhook_event(outcome);
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    if let Err(rejection) = shared.verifier.verify(&headers, &body).await {
        // One aggregated line per period, not one per forgery (a flood must not bury the
        // daemon's own lines under journald's rate limit).
        crate::serve::log_rejection(
            "webhook events",
            rejection.reason(),
            Some(&rejection.to_string()),
        );
        crate::metrics::global().webhook_rejected(rejection.reason());
        count("rejected");
        shared.rejected.add(&shared.store);
        return (StatusCode::UNAUTHORIZED, "signature not verified\n");
    }
    let event = match Event::parse(&body) {
        Ok(e) => e,
        Err(e) => {
            // Signed by Microsoft but not an event we can read: retrying will not help.
            tracing::warn!(error = %e, "webhook event signed but unreadable; ignored");
            count("unreadable");
            return (StatusCode::BAD_REQUEST, "unreadable event\n");
        }
    };
    let referral_id = event.referral_id();
    let stored = NewEvent {
        event_name: event.event_name.clone(),
        resource_uri: event.resource_uri.clone(),
        referral_id: referral_id.clone(),
        changed_at: event.change_utc.clone().unwrap_or_default(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let now = Utc::now();
    let id = match shared
        .store
        .call(move |c| wstore::accept(c, &stored, now))
        .await
    {
        Ok(id) => id,
        Err(e) => {
            // Not stored: a 5xx makes Partner Center deliver it again.
            tracing::error!(error = %e, "cannot store a webhook event; asking for a redelivery");
            return (StatusCode::SERVICE_UNAVAILABLE, "try again\n");
        }
    };
    let Some(event_id) = id else {
        count("duplicate");
        tracing::debug!(event = %event.event_name, referral_id = ?referral_id, "duplicate webhook event");
        return (StatusCode::OK, "duplicate\n");
    };
    count("verified");
    tracing::info!(event_id, event = %event.event_name, referral_id = ?referral_id, "webhook event accepted");
    let accepted = Accepted {
        event_id,
        event_name: event.event_name,
        referral_id,
    };
    if shared.events.try_send(accepted).is_err() {
        tracing::warn!(
            event_id,
            "forwarder busy; the stored event is picked up by its next sweep"
        );
    }
    (StatusCode::OK, "ok\n")
}
