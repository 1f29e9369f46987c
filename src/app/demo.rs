//! `cosell-sync demo`: starts the simulators of the three clouds on 127.0.0.1 with sample
//! referrals and AWS invitations, runs real cycles of the daemon against them on a throw-away
//! state directory, and prints the whole loop: referrals in, leads out, write-back, a linked
//! opportunity patched, a Google stage change flowing back, and an AWS invitation pulled
//! (through one throttle), alerted and accepted. No configuration and no network beyond the
//! loopback.

use chrono::Utc;
use figment::providers::Serialized;
use figment::Figment;

use crate::app::{self, App};

/// `println!` fitted to 80 columns ([`crate::render::fit`]).
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", crate::render::fit(&format!($($arg)*)))
    };
}
use crate::config::Config;
use crate::sim::aws::{self as sim_aws, AwsSimulator};
use crate::sim::{google::PARTNER_ID, sample, Fault, Simulator};
use crate::sync::CycleReport;

pub(crate) async fn run(referrals: usize) -> anyhow::Result<()> {
    let sim = Simulator::start().await?;
    let now = Utc::now();
    let samples = sample::demo_set(referrals, now);
    let pending = samples
        .iter()
        .filter(|r| r["substatus"] == "Pending")
        .count();
    sim.put_referrals(samples);
    let aws = aws_simulator(now).await?;
    let dir = tempfile::tempdir()?;
    // Outside the state directory, which is removed when the demo ends: the log outlives it.
    let log = log_to_file(
        &std::env::temp_dir().join(format!("cosell-sync-demo-{}.log", std::process::id())),
    );
    let config = demo_config(&sim, Some(&aws), dir.path())?;
    say!("cosell-sync demo");
    say!(
        "  simulator of Partner Center, Entra ID and Google Cloud CRM Partners on {}",
        sim.base_url()
    );
    say!(
        "  {} sample referrals ({pending} incoming Pending)",
        sim.referral_count()
    );
    say!(
        "  simulator of AWS Partner Central on {}: {} sample invitations",
        aws.endpoint(),
        aws.invitation_count()
    );
    say!("  state in {}", config.state.path.display());
    match log {
        Ok(path) => say!("  log in {}", path.display()),
        Err(e) => say!("  no log file ({e}); the log is off"),
    }
    println!();

    let mut app = App::build(config.clone())?;
    app.become_worker()?;
    let cycles = story(&sim, &aws, &app, story_referral(referrals)).await?;

    say!("6. Partner Center webhooks ([webhook]): a new referral arrives as a signed event;");
    say!("   the receiver verifies it, stores it, and forwards it at once, without a cycle:");
    webhook_step(&sim, &app, dir.path()).await?;
    println!();

    println!("7. Answering before the deadline ([actions]): every expiry alert carries a");
    println!("   signed link to a small page; one referral is accepted there, one declined");
    println!("   from the command line:");
    answer_step(&sim, &app, &config).await?;
    println!();

    say!("8. AWS Partner Central ([aws]): the invitation nearest its deadline is");
    say!("   alerted like a referral (source aws) and accepted through the same");
    say!("   executor; its accept task is followed every 5 s until COMPLETE:");
    aws_step(&aws, &app, &config).await?;
    println!();

    print_alerts(&app, 20).await?;
    println!();

    let report = app::status(&app.store, &config, Utc::now())?;
    print!("{}", crate::render::status(&report, 8));
    println!();
    say!("HTTP requests the simulator served: {:?}", sim.counters());
    let duplicates = sim
        .leads_per_external_id()
        .values()
        .filter(|n| **n > 1)
        .count();
    say!(
        "Leads in Google: {} (referrals with more than one lead: {duplicates})",
        sim.google_leads().len()
    );
    if cycles.iter().any(|c| !c.ok()) {
        anyhow::bail!("a demo cycle failed");
    }
    Ok(())
}

/// The five steps of the story, each a real cycle against the simulator.
/// The referral the story follows: number 10, or the last plain Pending one of a small inbox
/// (the first five are the threshold, expired and explicit-expiry cases).
fn story_referral(referrals: usize) -> usize {
    if referrals > 10 {
        10
    } else {
        referrals.max(5) - 1
    }
}

async fn story(
    sim: &Simulator,
    aws: &AwsSimulator,
    app: &App,
    sample: usize,
) -> anyhow::Result<Vec<CycleReport>> {
    let mut cycles = Vec::new();

    say!("1. First cycle: pull the inbox, create one Google lead per Pending referral, write");
    say!("   each lead's name back into the referral's externalReferenceId.");
    sim.script_faults([Fault::TooManyRequests {
        retry_after_secs: 1,
    }]);
    let first = step(app).await;
    say!("   (the first request got 429 Retry-After: 1; the client waited and went on)");
    print_aws_pull(aws, &first);
    cycles.push(first);
    let sample_id = sample::referral_id(sample);
    let lead_name = sim
        .referral(&sample_id)
        .and_then(|r| r["externalReferenceId"].as_str().map(str::to_string))
        .unwrap_or_default();
    say!("   referral {sample_id} → lead {lead_name}");

    say!("2. Second cycle, nothing changed anywhere:");
    let writes_before = writes(sim);
    cycles.push(step(app).await);
    say!(
        "   remote writes this cycle: {}",
        writes(sim) - writes_before
    );

    say!("3. Google turns that lead into an opportunity; the operator links it:");
    let opp = sim.convert_lead(&lead_name, 42).unwrap_or_default();
    say!("   $ cosell-sync link {sample_id} {opp}");
    say!("   {}", app::link::link(app, &sample_id, &opp).await?);
    cycles.push(step(app).await);

    say!("4. The deal value changes in Partner Center; the next cycle patches Google with");
    say!("   updateMask=dealSize only:");
    sim.edit_referral(&sample_id, |r| r["details"]["dealValue"] = 250_000.0.into());
    cycles.push(step(app).await);
    let size = sim
        .opportunity(&opp)
        .map(|o| o["dealSize"].clone())
        .unwrap_or_default();
    say!("   Google opportunity {opp} dealSize is now {size}");

    say!("5. The Google seller marks the opportunity lost; the referral closes in Partner Center:");
    sim.edit_opportunity(&opp, |o| o["salesStage"] = "SALES_STAGE_CLOSED_LOST".into());
    cycles.push(step(app).await);
    if let Some(r) = sim.referral(&sample_id) {
        say!(
            "   referral {sample_id} is now {}/{}: {}",
            r["status"].as_str().unwrap_or("?"),
            r["substatus"].as_str().unwrap_or("?"),
            r["statusReason"].as_str().unwrap_or("")
        );
    }
    Ok(cycles)
}

/// The demo's log goes to a file, so the story on stdout is not interleaved with log lines.
/// Installs the process's subscriber (the binary installs none for `demo`).
fn log_to_file(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let file = std::fs::File::create(path)?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_target(false)
        .try_init();
    Ok(path.to_path_buf())
}

/// The referral alerts, most severe first, then nearest deadline; says when it cuts the list.
async fn print_alerts(app: &App, show: usize) -> anyhow::Result<()> {
    let mut alerts: Vec<_> = app
        .store
        .call(|c| crate::store::alerts::list(c, false, 100_000))
        .await?
        .into_iter()
        .map(|row| row.alert)
        .filter(|a| a.kind.starts_with("referral_"))
        .collect();
    let rank = |severity: &str| match severity {
        "critical" => 0,
        "warning" => 1,
        _ => 2,
    };
    alerts.sort_by(|a, b| {
        rank(&a.severity)
            .cmp(&rank(&b.severity))
            .then_with(|| a.deadline.cmp(&b.deadline))
            .then_with(|| a.id.cmp(&b.id))
    });
    let shown = show.min(alerts.len());
    say!(
        "Alerts raised ({shown} of {} alerts, most severe then nearest deadline first; to the log — add [[alerts.webhook]] or [[alerts.command]] sinks for people):",
        alerts.len()
    );
    for alert in alerts.iter().take(show) {
        say!("  {:<9} {}", alert.severity, alert.message);
    }
    if alerts.len() > show {
        say!("  … {} more: cosell-sync alerts list", alerts.len() - show);
    }
    Ok(())
}

fn writes(sim: &Simulator) -> u64 {
    sim.counter("patch")
        + sim.counter("google.create_lead")
        + sim.counter("google.patch_opportunity")
}

async fn step(app: &App) -> CycleReport {
    let cycle = app.sync_once().await;
    let c = cycle.report;
    match &c.error {
        None => say!(
            "   ok in {:.2}s: {} pages ({} new, {} changed); Google: {} read, {} written, {} to retry",
            c.elapsed.as_secs_f64(),
            c.pages,
            c.counts.new,
            c.counts.changed,
            c.google.fetched,
            c.pushed.done,
            c.pushed.retried
        ),
        Some(e) => say!("   FAILED: {e}"),
    }
    c
}

/// The AWS simulator with the sample inbox (one invitation under a day from its deadline),
/// throttling its first request, and accept tasks that end at their second poll (a poll every
/// 5 s: the demo waits about 10 s for its task, not the default's 15).
async fn aws_simulator(now: chrono::DateTime<Utc>) -> anyhow::Result<AwsSimulator> {
    let aws = AwsSimulator::start().await?;
    aws.put_invitations(sim_aws::sample_invitations(now));
    aws.throttle_next(1);
    aws.set_polls_to_finish(1);
    Ok(aws)
}

/// What the first cycle's AWS pull did, and the throttle it backed off from.
fn print_aws_pull(aws: &AwsSimulator, cycle: &CycleReport) {
    match &cycle.aws {
        Some(pull) => say!(
            "   AWS Partner Central: {} invitations pulled ({} new) in {} page(s)",
            pull.counts.new + pull.counts.changed + pull.counts.unchanged,
            pull.counts.new,
            pull.pages
        ),
        None => say!("   AWS Partner Central: the pull FAILED (see the log)"),
    }
    let throttled = aws.counter("throttled");
    if throttled > 0 {
        say!(
            "   (AWS answered {throttled} request(s) with ThrottlingException; the client backed off and went on)"
        );
    }
}

/// A configuration pointing every endpoint at the simulators (Google key file in
/// `state_dir`); `[aws]` with the AWS simulator's key when there is one.
pub(crate) fn demo_config(
    sim: &Simulator,
    aws: Option<&AwsSimulator>,
    state_dir: &std::path::Path,
) -> anyhow::Result<Config> {
    let creds = &sim.state.credentials;
    let key_file = state_dir.join("google-key.json");
    std::fs::write(&key_file, sim.google_key_json())?;
    let figment = Figment::from(Serialized::defaults(serde_json::json!({
        "state": {"path": state_dir.join("state.db")},
        "microsoft": {
            "api_base": sim.base_url(),
            "authority": sim.base_url(),
            "tenant": creds.tenant,
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "refresh_token": creds.refresh_token,
            "requests_per_second": 200.0,
            "retry": {"min_delay": "100ms", "max_delay": "2s"}
        },
        "google": {
            "api_base": sim.base_url(),
            "partner_id": PARTNER_ID,
            "credentials_file": key_file,
            "requests_per_second": 200.0,
            "lead": {
                "submitter_email": "cosell@partner.example",
                "product_family": "GOOGLE_CLOUD_PLATFORM",
                "product_families": {"Microsoft365": "GOOGLE_WORKSPACE"}
            }
        },
        "sync": {"conflict": "microsoft", "retry_min": "1s", "retry_max": "5s"},
        // The demo compresses days into seconds: every tracked record is due at each cycle,
        // and the hourly read budget is scaled up with it.
        "refresh": {"min_interval": "0s", "reads_per_hour": 10_000_000}
    })));
    let figment = match aws {
        Some(aws) => figment.merge(Serialized::default(
            "aws",
            serde_json::json!({
                "endpoint": aws.endpoint(),
                "access_key_id": sim_aws::ACCESS_KEY_ID,
                "secret_access_key": sim_aws::SECRET_ACCESS_KEY,
                "requests_per_second": 200.0,
                "retry": {"min_delay": "100ms", "max_delay": "2s"}
            }),
        )),
        None => figment,
    };
    let loaded = Config::from_figment(figment, &state_dir.join("demo.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(loaded.config)
}

/// Demo step 6: the receiver on an ephemeral port trusting the simulator's test CA, one new
/// urgent referral, and the time from the event to its Google lead.
async fn webhook_step(sim: &Simulator, app: &App, dir: &std::path::Path) -> anyhow::Result<()> {
    let ca = dir.join("sim-ca.pem");
    std::fs::write(&ca, sim.webhook_ca_pem())?;
    let webhook = crate::webhook::PartnerWebhookConfig {
        listen: "127.0.0.1:0".into(),
        ca_file: Some(ca),
        certificate_url_prefixes: vec![sim.webhook_certificate_prefix()],
        ..crate::config::webhook::example("http://127.0.0.1/partner-center/events")
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    // The demo has no daemon scheduler: a bare deadline lane executes what the events store.
    let wake = crate::wake::DeadlineWake::new();
    let lane_app = std::sync::Arc::new(app.clone());
    tokio::spawn(lane_app.serve_wakes(wake.clone(), stop.clone()));
    let handoff = app.webhook_handoff(&wake);
    let (addr, _) = crate::webhook::start(&webhook, move || handoff.clone(), stop)
        .await
        .map_err(anyhow::Error::msg)?;
    sim.register_webhook(&format!("http://{addr}/partner-center/events"));
    let i = 90_000;
    let id = sample::referral_id(i);
    let age = chrono::Duration::days(14) - chrono::Duration::hours(3);
    let started = std::time::Instant::now();
    sim.put_referrals([sample::referral(i, Utc::now(), age, "New", "Pending")]);
    while !sim.leads_per_external_id().contains_key(&id) && started.elapsed().as_secs() < 10 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    // Let the forward finish (the write-back) before `status` below.
    for _ in 0..500 {
        let open = app
            .store
            .call(|c| crate::store::webhook::stats(c))
            .await?
            .open;
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    match sim.leads_per_external_id().get(&id) {
        Some(_) => say!(
            "   referral {id} (3h left) → Google lead in {} ms after the event; its 4h alert was raised on the way",
            took.as_millis()
        ),
        None => anyhow::bail!("the webhook event for {id} did not become a lead"),
    }
    Ok(())
}

/// The page on an ephemeral port and the answer sender beside it (the demo has no daemon
/// scheduler), until the returned guard is dropped.
async fn serve_page(
    app: &App,
    config: &Config,
) -> anyhow::Result<(
    crate::actions::ActionsConfig,
    std::sync::Arc<crate::actions::LinkSigner>,
    tokio_util::sync::DropGuard,
)> {
    use crate::actions::page;
    let listener_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let actions = crate::actions::ActionsConfig::loopback(listener_port);
    let signer = std::sync::Arc::new(
        crate::actions::LinkSigner::load(&actions, &config.state_dir())
            .map_err(anyhow::Error::msg)?,
    );
    let settings = page::PageSettings {
        signer: signer.clone(),
        config: actions.clone(),
        window: config.alerts.response_window.as_chrono(),
        referral_url: config.alerts.referral_url.clone(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let sender_app = std::sync::Arc::new(app.clone());
    tokio::spawn(super::answer::send_queued(
        move || sender_app.clone(),
        stop.clone(),
    ));
    let router = page::router(settings, app.store.clone(), app.cycle.send.answers.clone());
    page::serve(&actions.listen, router, stop.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    Ok((actions, signer, stop.drop_guard()))
}

/// The two open referrals nearest their deadline (those have expiry alerts).
async fn two_open_referrals(
    app: &App,
    config: &Config,
) -> anyhow::Result<(
    crate::store::referrals::ReferralSummary,
    crate::store::referrals::ReferralSummary,
)> {
    let now = Utc::now();
    let window = config.alerts.response_window.as_chrono();
    let mut open: Vec<_> = app
        .store
        .call(|c| crate::store::referrals::awaiting_response(c))
        .await?
        .into_iter()
        // Step 8 answers an AWS invitation; this step answers Partner Center referrals.
        .filter(|r| !crate::sync::aws_answer::is_invitation_id(&r.id))
        .filter(|r| crate::deadline::deadline(r.created_at, r.expires_at, window) > now)
        .collect();
    open.sort_by_key(|r| crate::deadline::deadline(r.created_at, r.expires_at, window));
    let mut open = open.into_iter();
    match (open.next(), open.next()) {
        (Some(first), Some(second)) => Ok((first, second)),
        _ => anyhow::bail!("the demo needs two open referrals"),
    }
}

/// Demo step 7: the action page on an ephemeral port with the daemon's answer sender beside
/// it (the one executor, answers only, woken by the page and by the command's queued
/// answer); one referral accepted with the page's form (as a browser posts it), one declined
/// with the `decline` command (which queues the answer and waits for the running "daemon" to
/// send it).
async fn answer_step(sim: &Simulator, app: &App, config: &Config) -> anyhow::Result<()> {
    let (actions, signer, _stop) = serve_page(app, config).await?;
    let (first, second) = two_open_referrals(app, config).await?;
    // The link exactly as the alert sinks get it: from the first referral's expiry alert.
    let id = first.id.clone();
    let alert = app
        .store
        .call(move |c| crate::store::alerts::for_referral(c, &id, 10))
        .await?
        .into_iter()
        .map(|row| row.alert)
        .find(|a| a.kind == "referral_expiring")
        .ok_or_else(|| anyhow::anyhow!("no expiry alert for {}", first.id))?;
    let mut alerting = app.alerts.clone();
    alerting.links = Some(signer.clone());
    let url = crate::alerts::deliver::action_url(&alerting, &alert)
        .ok_or_else(|| anyhow::anyhow!("the alert has no action_url"))?;
    let token = url.rsplit('/').next().unwrap_or_default().to_string();
    let http = crate::http::client_builder().build()?;
    let page_html = http.get(&url).send().await?.text().await?;
    println!("   alert for {}", first.id);
    println!("     → action_url {}/…", actions.public_url);
    println!(
        "   GET: the page shows the facts and the form ({} bytes, no script)",
        page_html.len()
    );
    let started = std::time::Instant::now();
    let response = http
        .post(&url)
        .form(&[
            ("token", token.as_str()),
            ("referral", first.id.as_str()),
            ("action", "accept"),
            ("reason", ""),
        ])
        .send()
        .await?;
    println!(
        "   POST Accept → HTTP {} in {} ms;",
        response.status().as_u16(),
        started.elapsed().as_millis(),
    );
    println!(
        "   Partner Center now has it {}",
        sim.referral(&first.id)
            .map(|r| format!("{}/{}", r["status"], r["substatus"]))
            .unwrap_or_default()
    );
    let reason = "Customer is outside our region".to_string();
    println!("   $ cosell-sync decline {} \\", second.id);
    println!("       --reason \"{reason}\"");
    match crate::app::commands::decline(config.clone(), &second.id, reason, None, false).await {
        Ok(printed) => printed
            .stdout
            .lines()
            .for_each(|line| println!("   {line}")),
        Err(e) => println!("   exit {}: {e}", e.exit_code()),
    }
    let answers = sim
        .patches()
        .into_iter()
        .filter(|p| p.referral_id == first.id || p.referral_id == second.id)
        .filter(|p| p.body[0]["path"] == "/status")
        .collect::<Vec<_>>();
    println!(
        "   PATCHes Partner Center received for these two answers: {}\n   (each with If-Match: {})",
        answers.len(),
        answers.iter().all(|p| p.if_match.is_some())
    );
    Ok(())
}

/// Demo step 8: the AWS invitation alerted nearest its deadline, accepted with the `accept`
/// command while an answer sender runs beside it (as the daemon's would): the command queues
/// the answer, the one executor checks the invitation is still PENDING, starts the accept
/// task with its stored ClientToken and follows it by TaskId every 5 s until COMPLETE, and
/// the command prints the new opportunity id.
async fn aws_step(aws: &AwsSimulator, app: &App, config: &Config) -> anyhow::Result<()> {
    let alert = app
        .store
        .call(|c| crate::store::alerts::list(c, false, 100_000))
        .await?
        .into_iter()
        .map(|row| row.alert)
        .filter(|a| a.kind == "referral_expiring" && a.source.as_deref() == Some("aws"))
        .min_by(|a, b| a.deadline.cmp(&b.deadline))
        .ok_or_else(|| anyhow::anyhow!("no AWS invitation was alerted"))?;
    let id = alert.referral_id.clone().unwrap_or_default();
    say!(
        "   alert (source aws): {} {}",
        alert.severity,
        alert.message
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let sender_app = std::sync::Arc::new(app.clone());
    tokio::spawn(super::answer::send_queued(
        move || sender_app.clone(),
        stop.clone(),
    ));
    say!("   $ cosell-sync accept {id}");
    let started = std::time::Instant::now();
    match crate::app::commands::accept(config.clone(), &id, None, false).await {
        Ok(printed) => printed.stdout.lines().for_each(|line| say!("   {line}")),
        Err(e) => say!("   exit {}: {e}", e.exit_code()),
    }
    let requests = aws.requests();
    let count = |operation: &str| requests.iter().filter(|r| r.operation == operation).count();
    say!(
        "   {} task start, {} task polls, {:.1}s; AWS now has the invitation {}",
        count("StartEngagementByAcceptingInvitationTask"),
        count("ListEngagementByAcceptingInvitationTasks"),
        started.elapsed().as_secs_f64(),
        aws.invitation(&id)
            .map(|i| i["Status"].as_str().unwrap_or("?").to_string())
            .unwrap_or_default()
    );
    Ok(())
}
