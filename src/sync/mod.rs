//! The sync primitives both lanes are made of: the Microsoft pull ([`pull`]), the Google
//! refresh on a per-record schedule ([`refresh`]), the pure planner ([`reconcile`], with
//! [`mapping`] for new leads and [`adopt`] for what a referral's externalReferenceId names),
//! planning into the outbox ([`plan`]) and the outbox's one executor ([`push`]).
//! [`crate::lanes`] puts them in order.
//! The AWS inbox: [`aws_pull`] (engagement invitations into the store; spec §8).
//! Accept / decline: the pure decision ([`answer`]) and how the one executor sends it
//! ([`push::answer_referral`]).

pub(crate) mod adopt;
pub(crate) mod answer;
pub(crate) mod aws_answer;
pub(crate) mod aws_pull;
pub(crate) mod mapping;
pub mod plan;
pub(crate) mod pull;
pub mod push;
pub(crate) mod reconcile;
pub mod refresh;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::google::GoogleClient;
use crate::http::{ApiError, RetryPolicy};
use crate::microsoft::MicrosoftClient;
use crate::store::referrals::UpsertCounts;
use crate::store::{Store, StoreError};

pub(crate) use plan::PlanStats;
pub(crate) use pull::{PullSettings, PullStats};
pub(crate) use push::{PushStats, Schedule, SendSettings};
pub(crate) use reconcile::Policy;
pub(crate) use refresh::{RefreshSettings, RefreshStats};

/// Why a cycle failed.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CycleError {
    /// Authentication refused: the operator has to act (re-run `auth microsoft`).
    pub fn is_auth(&self) -> bool {
        matches!(self, CycleError::Api(e) if e.is_auth())
    }
}

/// Everything the Google half of the sync needs.
#[derive(Debug, Clone)]
pub struct GoogleSide {
    pub client: GoogleClient,
    pub policy: Policy,
    /// In-call retries of idempotent Google calls (gets, patches) — `[google.retry]`;
    /// never used for creates.
    pub retry: RetryPolicy,
    pub refresh: RefreshSettings,
    /// When this worker began: a referral copy older than this may predate a restore, so a
    /// lead create reads the referral again first (the guard in `push::create_lead`).
    pub fresh_since: DateTime<Utc>,
}

/// What the AWS side needs (spec §8): the Partner Central client and its retry policy.
#[derive(Debug, Clone)]
pub struct AwsSide {
    pub client: crate::aws::client::AwsClient,
    /// `[aws.retry]`: in-call retries of every AWS call (reads back off on throttling and
    /// 5xx; the accept's start is repeated with the same `ClientToken`).
    pub retry: RetryPolicy,
}

/// What a cycle needs: the store and both clients.
#[derive(Debug, Clone)]
pub struct CycleContext {
    pub store: Store,
    /// False without `[microsoft]` (an AWS-only set-up): no pull, no changes read; the
    /// client is there but its token source refuses every grant before any request.
    pub(crate) microsoft_on: bool,
    pub microsoft: MicrosoftClient,
    /// `[microsoft.retry]`: every Microsoft call (pull pages, re-reads, patches, answers).
    pub microsoft_retry: RetryPolicy,
    /// The Microsoft pull's paging and watermark settings.
    pub pull: PullSettings,
    /// `None` when `[google]` is not configured: the daemon then only pulls Microsoft.
    pub google: Option<GoogleSide>,
    /// `None` without `[aws]` (or when the command read no secrets): no invitation is
    /// pulled or answered.
    pub aws: Option<AwsSide>,
    /// Cancelled on SIGTERM: no new remote write starts after it.
    pub stop: tokio_util::sync::CancellationToken,
    /// How the one executor sends, whatever the action kind (answers included).
    pub send: SendSettings,
    /// `[triage]` and `[[rules]]` (spec §7): the deadline lane decides every awaiting
    /// referral each cycle (see `crate::triage`).
    pub(crate) triage: crate::config::TriageConfig,
    pub(crate) rules: std::sync::Arc<[crate::config::RuleConfig]>,
}

/// What the Google reads of a cycle did (a one-shot `sync` reads what is due).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GooglePullStats {
    pub fetched: u64,
    pub(crate) failed: u64,
    /// Tracked records not re-read because they were not due (`sync` without `--all`).
    pub(crate) not_due: u64,
    /// Due, but left for later by the hourly read budget.
    pub(crate) left_due: u64,
    /// When the next tracked record falls due after this cycle.
    pub(crate) next_due_at: Option<DateTime<Utc>>,
}

/// What a cycle did, for the log, `status` and the exit code.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    pub cycle_id: String,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) elapsed: Duration,
    pub(crate) pages: u64,
    pub(crate) counts: UpsertCounts,
    pub google: GooglePullStats,
    pub planned: PlanStats,
    pub pushed: PushStats,
    pub error: Option<String>,
    /// The failure was an authentication refusal.
    pub auth_failed: bool,
    /// What the AWS pull did (`None`: `[aws]` off, or the pull failed).
    pub aws: Option<aws_pull::AwsPullStats>,
}

impl CycleReport {
    pub fn new(started_at: DateTime<Utc>) -> CycleReport {
        CycleReport {
            cycle_id: uuid::Uuid::new_v4().to_string(),
            started_at,
            elapsed: Duration::ZERO,
            pages: 0,
            counts: UpsertCounts::default(),
            google: GooglePullStats::default(),
            planned: PlanStats::default(),
            pushed: PushStats::default(),
            error: None,
            auth_failed: false,
            aws: None,
        }
    }

    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Records a failure (the first one wins).
    pub fn fail(&mut self, e: &CycleError) {
        if self.error.is_none() {
            self.auth_failed = e.is_auth();
            self.error = Some(e.to_string());
        }
    }
}
