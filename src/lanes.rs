//! The two lanes, in order (issue "deadline first"):
//!
//! - The **deadline lane** ([`run_cycle`] with [`TickOptions::deadline`]) runs every tick and
//!   never waits on Google re-reads: Microsoft pull (inbox + incremental), then the AWS
//!   invitations when `[aws]` is set (each page's new ones alerted at once) → expiry alerts
//!   (raised and delivered at once: they need only Microsoft data) → plan the referrals whose
//!   inputs changed → queued accepts and declines, lead creates and write-backs (one executor,
//!   answers first) → every other alert and delivery.
//! - The **refresh lane** ([`refresh_once`], looped by [`crate::app::scheduler`]) re-reads tracked
//!   Google records on their own schedule under the hourly budget, at background priority on
//!   the shared rate limiter; a changed record queues its referral for the deadline lane.
//!
//! `sync` (one shot) is both in one cycle ([`TickOptions::one_shot`]): a full pull, the
//! Google records due now, a full plan, the push and the alerts.
//!
//! This module sits above [`crate::sync`] and [`crate::alerts`] and joins them, so neither
//! imports the other.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tracing::Instrument;

use crate::alerts::deliver::{self, AlertSettings, AlertStats, CycleDelivery, Raise};
use crate::store::outbox::Kinds;
use crate::store::{runs, schedule};
use crate::sync::pull::{MicrosoftPull, Queries};
use crate::sync::{
    plan, push, refresh, CycleContext, CycleError, CycleReport, GooglePullStats, PullStats,
    RefreshStats,
};

/// A cycle's report and what its alert phases did.
#[derive(Debug, Clone, Serialize)]
pub struct Cycle {
    pub report: CycleReport,
    pub alerts: AlertStats,
}

impl Cycle {
    /// What [`crate::health::Health::cycle_finished`] needs, as plain data.
    pub fn outcome(&self) -> crate::health::CycleOutcome {
        let r = &self.report;
        crate::health::CycleOutcome {
            started_at: r.started_at.into(),
            elapsed: r.elapsed,
            ok: r.ok(),
            writes: crate::health::WriteCounts {
                done: r.pushed.done,
                retried: r.pushed.retried,
                dead: r.pushed.dead,
                quarantined: r.pushed.quarantined,
            },
            alerts_delivered: self.alerts.delivered,
            alerts_undelivered: self.alerts.undelivered,
        }
    }
}

/// What one cycle does besides the deadline path itself.
#[derive(Debug, Clone, Copy)]
pub struct TickOptions {
    /// Pull the Microsoft inbox first. False for a tick a producer asked for over work it
    /// already stored (a webhook event's referral): plan, push and alert only.
    pub pull: bool,
    /// Read the changes to known referrals too (the incremental query); the daemon reads
    /// them in the background instead ([`changes_once`]).
    pub changes: bool,
    /// Plan every candidate referral (otherwise only the plan queue).
    pub full_plan: bool,
    /// Read the Google records due now before planning (one-shot `sync` only: the daemon's
    /// refresh lane does this in the background).
    pub read_google: bool,
    /// `sync --all`: read every tracked record that is not final, whatever its schedule and
    /// the hourly budget (the client's rate limiter and `[refresh]` concurrency still hold).
    pub read_all: bool,
}

impl TickOptions {
    /// A deadline-lane tick of the daemon.
    pub fn deadline(full_plan: bool) -> TickOptions {
        TickOptions {
            pull: true,
            changes: false,
            full_plan,
            read_google: false,
            read_all: false,
        }
    }

    /// The same tick without the Microsoft pull ("no pull needed").
    pub(crate) fn without_pull(self) -> TickOptions {
        TickOptions {
            pull: false,
            ..self
        }
    }

    /// `sync`: everything, once.
    pub(crate) fn one_shot() -> TickOptions {
        TickOptions {
            pull: true,
            changes: true,
            full_plan: true,
            read_google: true,
            read_all: false,
        }
    }

    /// `sync --all`: everything, once, and every tracked Google record re-read.
    pub(crate) fn one_shot_all() -> TickOptions {
        TickOptions {
            read_all: true,
            ..TickOptions::one_shot()
        }
    }
}

/// The alert phases of one cycle: what they raised and delivered, and what they share (sinks
/// that failed, chat messages sent).
struct Alerting<'a> {
    store: &'a crate::store::Store,
    settings: &'a AlertSettings,
    dry_run: bool,
    delivery: CycleDelivery,
    stats: AlertStats,
}

impl Alerting<'_> {
    async fn raise(&mut self, which: Raise) {
        let stats = deliver::raise_and_deliver(
            self.store,
            self.settings,
            which,
            Utc::now(),
            self.dry_run,
            &mut self.delivery,
        )
        .await;
        self.stats.add(stats);
    }
}

/// Runs one cycle: records it, runs the phases, records how it ended. A failure is in the
/// report (and its `cycle_runs` row), never a panic; alerts are raised whatever happened.
pub(crate) async fn run_cycle(
    ctx: &CycleContext,
    alerts: &AlertSettings,
    options: TickOptions,
    dry_run: bool,
) -> Cycle {
    let started = tokio::time::Instant::now();
    crate::progress::cycle_started();
    let mut report = CycleReport::new(Utc::now());
    let span = tracing::info_span!("cycle", cycle_id = %report.cycle_id);
    let mut alerting = Alerting {
        store: &ctx.store,
        settings: alerts,
        dry_run,
        delivery: CycleDelivery::default(),
        stats: AlertStats::default(),
    };
    async {
        let (id, at) = (report.cycle_id.clone(), report.started_at);
        if let Err(e) = ctx.store.call(move |c| runs::start_cycle(c, &id, at)).await {
            report.fail(&e.into());
        }
        let queries = match options.changes {
            true => Queries::Both,
            false => Queries::InboxOnly,
        };
        // Without [microsoft] (AWS only) there is no Partner Center inbox to read.
        let pulled = match options.pull && ctx.microsoft_on {
            true => pull_acting_on_new(ctx, queries, &mut alerting, &mut report).await,
            false => Ok(PullStats::default()),
        };
        // The AWS inbox next, acting on each page as Microsoft's; whatever Microsoft's pull
        // did. Its failure is the cycle's only after the Microsoft and Google parts ran.
        let started_at = report.started_at;
        let aws_pulled = pull_aws(ctx, options, &mut alerting, started_at).await;
        let aws_error = match aws_pulled {
            Some(Ok(stats)) => {
                report.aws = Some(stats);
                None
            }
            Some(Err(e)) => Some(e),
            None => None,
        };
        let pulled_stats = match &pulled {
            Ok(s) | Err((s, _)) => *s,
        };
        report.pages = pulled_stats.pages;
        report.counts = pulled_stats.counts;
        if let Err((_, e)) = &pulled {
            report.fail(e);
        }
        // The rules decide every referral awaiting an answer before the push (an apply
        // decision queued here goes out in this cycle) and before the expiry alerts (which
        // say what the rules decided). Not on a failed pull: never answer from a stale copy.
        if report.ok() {
            triage(ctx, alerts, None).await;
        }
        // Expiry alerts go out while the Google work runs: neither waits for the other
        // (a slow or dead alert sink never delays a lead create).
        let google = async {
            match report.ok() {
                true => plan_and_push(ctx, options, &mut report).await,
                false => Ok(()),
            }
        };
        let ((), google) = tokio::join!(alerting.raise(Raise::Expiry), google);
        if let Err(e) = google {
            report.fail(&e);
        }
        if let Some(e) = aws_error {
            tracing::error!(error = %e, "AWS invitations could not be pulled: {e}");
            report.fail(&e);
        }
        if let Some(unsaved) = ctx.microsoft.tokens().unsaved() {
            let alert = crate::alerts::unrecorded::token_unsaved_alert(&unsaved);
            alerting.stats.raised +=
                crate::alerts::unrecorded::raise_one(&ctx.store, alerts, alert).await;
        }
        let health = Raise::All {
            error: report.error.clone(),
            auth_failed: report.auth_failed,
        };
        alerting.raise(health).await;
        // After the alerts: a referral that just expired has its alert before it is counted.
        crate::service_level::settle(&ctx.store, alerts.window, Utc::now()).await;
    }
    .instrument(span.clone())
    .await;
    report.elapsed = started.elapsed();
    record_end(ctx, &report, &span).await;
    Cycle {
        report,
        alerts: alerting.stats,
    }
}

/// The AWS pull of a cycle that pulls, when `[aws]` is configured (`None` otherwise), page
/// by page: a page's new invitations get their expiry alerts before the next page is read.
async fn pull_aws(
    ctx: &CycleContext,
    options: TickOptions,
    alerting: &mut Alerting<'_>,
    now: chrono::DateTime<Utc>,
) -> Option<Result<crate::sync::aws_pull::AwsPullStats, CycleError>> {
    let aws = ctx.aws.as_ref().filter(|_| options.pull)?;
    let mut pull = crate::sync::aws_pull::AwsPull::new(&ctx.store, aws, now);
    loop {
        match pull.next_page().await {
            Ok(Some(new)) if new.is_empty() => {}
            Ok(Some(new)) => alerting.raise(Raise::ExpiryOf(new)).await,
            Ok(None) => return Some(Ok(pull.stats())),
            Err(e) => return Some(Err(e)),
        }
    }
}

/// The Microsoft pull, page by page. A page that brought new referrals is acted on before
/// the next page is read: its expiry alerts are raised and delivered, and (Google side on)
/// its referrals are planned and their leads created — so a referral's latency is the pages
/// before it, not the whole inbox.
async fn pull_acting_on_new(
    ctx: &CycleContext,
    queries: Queries,
    alerting: &mut Alerting<'_>,
    report: &mut CycleReport,
) -> Result<PullStats, (PullStats, CycleError)> {
    let (store, client, now) = (&ctx.store, &ctx.microsoft, report.started_at);
    let microsoft = (client, &ctx.microsoft_retry);
    let mut pull = MicrosoftPull::with(store, microsoft, &ctx.pull, now, queries);
    let mut progress = PullProgress::default();
    loop {
        let page = match pull.next_page().await {
            Ok(Some(page)) => page,
            Ok(None) => return Ok(pull.stats()),
            Err(e) => return Err((pull.stats(), e)),
        };
        progress.page(&page);
        crate::progress::page_read();
        if page.counts.new == 0 {
            continue;
        }
        // The page's new referrals are decided first, so their first alerts say how.
        triage(ctx, alerting.settings, Some(page.ids.clone())).await;
        let ((), forwarded) = tokio::join!(
            alerting.raise(Raise::ExpiryOf(page.ids)),
            forward_queued(ctx, report)
        );
        if let Err(e) = forwarded {
            return Err((pull.stats(), e));
        }
    }
}

/// A triage pass ([`crate::triage::cycle`]): every referral awaiting an answer (`None`), or
/// a page's (recorded only). A store error is logged, never fails the cycle: the rules are a
/// convenience on top of the deadline path, which goes on without them.
async fn triage(ctx: &CycleContext, alerts: &AlertSettings, page: Option<Vec<String>>) {
    use crate::triage::cycle::{pass, Scope, Settings};
    if ctx.rules.is_empty() {
        return;
    }
    let settings = Settings::new(&ctx.triage, &ctx.rules, ctx.send.response_window);
    let full = page.is_none();
    let done = ctx
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let scope = match &page {
                Some(ids) => Scope::Only(ids),
                None => Scope::All,
            };
            let done = pass(&tx, &settings, scope, Utc::now())?;
            tx.commit()?;
            Ok(done)
        })
        .await;
    match done {
        Ok(done) => {
            let s = done.stats;
            if full && s.answering > 0 {
                tracing::info!(
                    awaiting = s.awaiting,
                    decided = s.answering,
                    queued = s.queued,
                    held = s.held,
                    mode = ctx.triage.mode.as_str(),
                    "triage: rules decided {} of {} referrals awaiting an answer",
                    s.answering,
                    s.awaiting
                );
            }
            if let Some(alert) = done.limit_alert {
                crate::alerts::unrecorded::raise_one(&ctx.store, alerts, alert).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "triage: cannot record the rules' decisions"),
    }
}

/// Progress of a pull that spans pages (a first sync over a large inbox): shown from the
/// second page on, so a one-page cycle of the daemon stays quiet.
#[derive(Default)]
struct PullProgress {
    first_page: Option<u64>,
    shown: Option<crate::progress::Progress>,
}

impl PullProgress {
    fn page(&mut self, page: &crate::sync::pull::PageDone) {
        let Some(first) = self.first_page else {
            self.first_page = Some(page.read);
            return;
        };
        let shown = self
            .shown
            .get_or_insert_with(|| crate::progress::Progress::new("referrals read", None));
        if shown.done() == 0 {
            shown.inc(first);
        }
        shown.inc(page.read);
        // `@odata.count` is a total only when it is more than what was read ([?]: it may
        // count the page); the inbox query's total, so only while on the inbox.
        if let Some(total) = page.total_hint.filter(|t| *t > shown.done()) {
            if page.query == "inbox" {
                shown.set_total(total);
            }
        }
    }
}

/// Plans the queued referrals and pushes what is due (the forward path of new referrals),
/// accepts and declines first; without the Google side, the answers alone.
async fn forward_queued(ctx: &CycleContext, report: &mut CycleReport) -> Result<(), CycleError> {
    if let Some(google) = &ctx.google {
        let planned = plan::plan_queued(&ctx.store, &google.policy, Utc::now()).await?;
        report.planned.add(planned);
    }
    let pushed = push::push_due(ctx, &report.cycle_id, Kinds::All).await?;
    report.pushed.add(pushed);
    Ok(())
}

/// Plan and push (and, for a one-shot cycle, the Google reads due first); the push sends
/// queued accepts and declines too.
async fn plan_and_push(
    ctx: &CycleContext,
    options: TickOptions,
    report: &mut CycleReport,
) -> Result<(), CycleError> {
    let Some(google) = &ctx.google else {
        // Queued accepts and declines still go out.
        return forward_queued(ctx, report).await;
    };
    if options.read_google {
        report.google = read_google(ctx, options.read_all).await?;
    }
    let now = Utc::now();
    if options.full_plan {
        // What this cycle's pages already planned (new referrals and their links) is not
        // planned again: every referral once per change.
        let since = Some(report.started_at);
        let planned = plan::plan_all(&ctx.store, &google.policy, now, since).await?;
        report.planned.add(planned);
    }
    forward_queued(ctx, report).await
}

/// The one-shot reads: every record due now (`all`: every tracked record that is not
/// final), and what was not read and when the next falls due, for the final line.
async fn read_google(ctx: &CycleContext, all: bool) -> Result<GooglePullStats, CycleError> {
    let start = Utc::now();
    let (tracked, due) = ctx
        .store
        .call(move |c| {
            if all {
                let n = schedule::make_all_due(c, start)?;
                return Ok((n, n));
            }
            schedule::adopt_linked(c, start)?;
            let backlog = schedule::backlog(c, start)?;
            Ok((backlog.tracked, backlog.due))
        })
        .await?;
    let read = read_due(ctx, start, all.then_some(due)).await?;
    let next_due_at = ctx.store.call(|c| schedule::next_due_at(c)).await?;
    Ok(GooglePullStats {
        fetched: read.read,
        failed: read.failed,
        not_due: tracked.saturating_sub(due),
        left_due: due.saturating_sub(read.read + read.failed + read.finalized),
        next_due_at,
    })
}

/// Reads every Google record due at `start`, as far as the budget allows (`all`: the
/// number made due by `sync --all`, read whatever the budget, with progress lines).
/// Every pass runs at the clock of the start, so each record due then is read once.
async fn read_due(
    ctx: &CycleContext,
    start: chrono::DateTime<Utc>,
    all: Option<u64>,
) -> Result<RefreshStats, CycleError> {
    let mut total = RefreshStats::default();
    let Some(google) = &ctx.google else {
        return Ok(total);
    };
    let mut settings = google.refresh.clone();
    // `--all`: a bar on a terminal, else a log line now and then, with the total.
    let mut progress =
        all.map(|of| crate::progress::Progress::new("Google records re-read", Some(of)));
    if all.is_some() {
        settings.reads_per_hour = u64::MAX;
    }
    loop {
        let pass = refresh::refresh_pass(&ctx.store, google, &settings, start).await?;
        total.add(pass);
        if let Some(p) = progress.as_mut() {
            p.inc(pass.read + pass.failed + pass.finalized);
        }
        if !pass.more_due || pass.budget_exhausted || pass.read + pass.failed + pass.finalized == 0
        {
            if let Some(p) = progress {
                p.finish();
            }
            return Ok(total);
        }
    }
}

/// The changes to referrals already known (the incremental query), at background priority
/// on the Microsoft rate limiter: a large batch of changes (a bulk accept in the portal, the
/// overlap re-read after it) never holds a new referral back. Changed referrals are queued
/// for planning; the caller wakes the deadline lane when there are any.
pub async fn changes_once(ctx: &CycleContext) -> Result<PullStats, CycleError> {
    if !ctx.microsoft_on {
        return Ok(PullStats::default());
    }
    let client = ctx.microsoft.background();
    let mut pull = MicrosoftPull::with(
        &ctx.store,
        (&client, &ctx.microsoft_retry),
        &ctx.pull,
        Utc::now(),
        Queries::ChangesOnly,
    );
    while pull.next_page().await?.is_some() {}
    Ok(pull.stats())
}

/// The refresh lane's backlog (records due, the one checked longest ago), for the metrics.
pub async fn refresh_backlog(
    ctx: &CycleContext,
) -> Result<crate::store::schedule::RefreshBacklog, crate::store::StoreError> {
    ctx.store
        .call(|c| crate::store::schedule::backlog(c, Utc::now()))
        .await
}

/// One pass of the refresh lane (nothing when the Google side is off).
pub async fn refresh_once(ctx: &CycleContext) -> Result<RefreshStats, CycleError> {
    match &ctx.google {
        Some(google) => {
            refresh::refresh_pass(&ctx.store, google, &google.refresh, Utc::now()).await
        }
        None => Ok(RefreshStats::default()),
    }
}

/// A full plan of every candidate referral, off the deadline path (the refresh lane's
/// periodic safety net beside the plan queue).
pub async fn full_plan(ctx: &CycleContext) -> Result<crate::sync::PlanStats, CycleError> {
    match &ctx.google {
        Some(google) => Ok(plan::plan_all(&ctx.store, &google.policy, Utc::now(), None).await?),
        None => Ok(Default::default()),
    }
}

async fn record_end(ctx: &CycleContext, report: &CycleReport, span: &tracing::Span) {
    let (id, pages, counts, err) = (
        report.cycle_id.clone(),
        report.pages,
        report.counts,
        report.error.clone(),
    );
    let actions = (
        report.pushed.done,
        report.pushed.dead + report.pushed.quarantined,
    );
    if let Err(e) = ctx
        .store
        .call(move |c| {
            runs::finish_cycle(c, &id, Utc::now(), pages, counts, actions, err.as_deref())
        })
        .await
    {
        tracing::error!(parent: span, error = %e, "cannot record the end of the cycle");
    }
    match &report.error {
        None => tracing::info!(parent: span,
            pages = report.pages,
            new = report.counts.new,
            changed = report.counts.changed,
            unchanged = report.counts.unchanged,
            rejected = report.counts.rejected,
            google_fetched = report.google.fetched,
            planned = report.planned.referrals,
            queued = report.planned.queued,
            written = report.pushed.done,
            retried = report.pushed.retried,
            dead = report.pushed.dead,
            quarantined = report.pushed.quarantined,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "cycle finished"
        ),
        // The cause is in the message itself: `journalctl -p err` shows MESSAGE only.
        Some(e) => {
            tracing::error!(parent: span, error = %e, pages = report.pages, "cycle failed: {e}")
        }
    }
}

/// How long the refresh lane pauses after a pass, from what the pass found.
pub(crate) fn refresh_pause(result: &Result<RefreshStats, CycleError>) -> Duration {
    match result {
        Ok(s) if s.more_due && !s.budget_exhausted => Duration::ZERO,
        Ok(s) if s.budget_exhausted => Duration::from_secs(5),
        Ok(_) => Duration::from_secs(2),
        Err(_) => Duration::from_secs(30),
    }
}
