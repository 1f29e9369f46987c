//! `run` as systemd sees it: sd_notify messages in order, the watchdog, SIGHUP reloads,
//! metrics and `/healthz`, SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cosell_sync::sim::{sample, Faults};

use crate::helpers::{wait_until, wait_until_async, TestEnv, BIN};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Collects notify datagrams until `until` matches one (or the time is up).
pub(crate) fn collect(
    socket: &UnixDatagram,
    seen: &mut Vec<String>,
    until: &str,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.starts_with(until);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

pub(crate) async fn http_get(url: &str) -> (u16, String) {
    let client = cosell_sync::http::client_builder().build().unwrap();
    let response = client.get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// `run` with a notify socket (its reads time out after 100 ms) and its log in the test's
/// directory: the socket to `collect` from, the daemon, the log's path.
pub(crate) fn start_run(env: &TestEnv) -> (UnixDatagram, tokio::process::Child, PathBuf) {
    let notify_path = env.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let log = env.dir.path().join("daemon.log");
    let child = spawn_run(env, &notify_path, &log);
    (socket, child, log)
}

pub(crate) fn spawn_run(
    env: &TestEnv,
    notify: &std::path::Path,
    log: &std::path::Path,
) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        // systemd starts services in `/`: messages naming the config must keep its full path.
        .current_dir("/")
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", "600000")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        // A failing assertion must not leave a daemon running.
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `run` in the background (its log in the test's directory), once it has started: it then
/// holds the worker lock, so a command beside it leaves its answer to the daemon.
pub(crate) async fn spawn_started(env: &TestEnv) -> tokio::process::Child {
    let dir = env.dir.path();
    let log = dir.join("daemon.log");
    let daemon = spawn_run(env, &dir.join("notify.sock"), &log);
    let started = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("daemon started")
    })
    .await;
    assert!(started, "daemon did not start");
    daemon
}

pub(crate) fn kill(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_watchdog_metrics_reload_and_stop_in_order() {
    let port = free_port();
    let env = TestEnv::with_google(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).await;
    env.sim
        .put_referrals(sample::demo_set(12, chrono::Utc::now()));
    let (socket, mut child, log) = start_run(&env);

    let mut seen = Vec::new();
    assert!(
        collect(&socket, &mut seen, "READY=1", Duration::from_secs(20)),
        "no READY: {seen:?}"
    );
    assert!(
        collect(
            &socket,
            &mut seen,
            "STATUS=last cycle ok",
            Duration::from_secs(20)
        ),
        "no cycle status: {seen:?}"
    );
    assert!(
        collect(&socket, &mut seen, "WATCHDOG=1", Duration::from_secs(5)),
        "no watchdog: {seen:?}"
    );

    let (code, body) = http_get(&format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await;
    for family in [
        "cosell_cycles_total{outcome=\"ok\"}",
        "cosell_cycle_duration_seconds_sum",
        "cosell_api_requests_total{api=\"microsoft\",method=\"GET\",status=\"200\"}",
        "cosell_api_requests_total{api=\"google\",method=\"POST\",status=\"200\"}",
        "cosell_outbox_actions{kind=\"create_lead\",state=\"done\"}",
        "cosell_referrals_awaiting_response{time_left=\"lt_4h\"}",
        "cosell_alerts{kind=\"referral_expiring\"",
        "cosell_healthy 1",
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from:\n{metrics}"
        );
    }

    // SIGHUP with a broken config: refused, the daemon goes on.
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{good}\n[schedule]\nsync = \"not cron\"\n"),
    )
    .unwrap();
    kill(&child, "-HUP");
    let logged = |line: &str| std::fs::read_to_string(&log).is_ok_and(|t| t.contains(line));
    assert!(
        wait_until(Duration::from_secs(20), || logged(
            "configuration reload refused"
        ))
        .await
    );
    assert_eq!(
        http_get(&format!("http://127.0.0.1:{port}/healthz"))
            .await
            .0,
        200
    );
    // SIGHUP with a good one (a new schedule): taken.
    std::fs::write(
        &env.config,
        format!("{good}\n[schedule]\nsync = \"*/2 * * * * *\"\n"),
    )
    .unwrap();
    kill(&child, "-HUP");
    assert!(wait_until(Duration::from_secs(20), || logged("configuration reloaded")).await);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("configuration reload refused") && text.contains("schedule.sync"),
        "{text}"
    );
    assert!(text.contains("configuration reloaded"), "{text}");
    // The cron library's INFO chatter stays out of the operator's log.
    assert!(
        !text.contains("Job creator") && !text.contains("Uninited"),
        "{text}"
    );

    kill(&child, "-TERM");
    assert!(
        collect(&socket, &mut seen, "STOPPING=1", Duration::from_secs(20)),
        "no STOPPING: {seen:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let order: Vec<&str> = seen
        .iter()
        .map(|m| m.split('=').next().unwrap())
        .filter(|m| *m != "WATCHDOG" && *m != "STATUS")
        .collect();
    assert_eq!(order, vec!["READY", "STOPPING"]);
    let ready_at = seen.iter().position(|m| m == "READY=1").unwrap();
    assert!(
        seen[..ready_at]
            .iter()
            .all(|m| !m.starts_with("STATUS=last cycle")),
        "READY first: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_503_after_failing_cycles() {
    let port = free_port();
    let env = TestEnv::with_extra(&format!(
        "max_retries = 0\n\n[schedule]\nsync = \"* * * * * *\"\n\n[alerts]\nfailed_cycles = 2\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    ))
    .await;
    env.sim.set_faults(Faults {
        rate_5xx: 1.0,
        ..Faults::default()
    });
    let (socket, mut child, _log) = start_run(&env);
    let mut seen = Vec::new();
    assert!(
        collect(&socket, &mut seen, "READY=1", Duration::from_secs(20)),
        "{seen:?}"
    );
    assert!(
        collect(
            &socket,
            &mut seen,
            "STATUS=last cycle FAILED",
            Duration::from_secs(20)
        ),
        "{seen:?}"
    );
    let healthz = &format!("http://127.0.0.1:{port}/healthz");
    let last = &std::sync::Mutex::new((0, String::new()));
    let unhealthy = wait_until_async(Duration::from_secs(20), || async move {
        let got = http_get(healthz).await;
        let turned = got.0 == 503;
        *last.lock().unwrap() = got;
        turned
    })
    .await;
    let (_, body) = last.lock().unwrap().clone();
    assert!(unhealthy, "healthz never turned 503: {body}");
    assert!(body.contains("cycles failed"), "{body}");
    // The HEALTHCHECK probe says the same with its exit code.
    let probe = env.run(&["health"]).await;
    assert_eq!(probe.status.code(), Some(1), "{probe:?}");
    assert!(probe.stderr.contains("answered 503"), "{probe:?}");
    // Recovery: the API works again, /healthz follows.
    env.sim.set_faults(Faults::default());
    let recovered = wait_until_async(Duration::from_secs(20), || async move {
        http_get(healthz).await.0 == 200
    })
    .await;
    assert!(recovered, "healthz never recovered");
    let probe = env.run(&["health"]).await;
    assert!(probe.status.success(), "{probe:?}");
    kill(&child, "-TERM");
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
}

/// `run` started and READY: the child, its log and its pid (for `reload --pid`).
fn ready_daemon(env: &TestEnv) -> (tokio::process::Child, PathBuf, String) {
    let (socket, child, log) = start_run(env);
    let mut seen = Vec::new();
    assert!(
        collect(&socket, &mut seen, "READY=1", Duration::from_secs(20)),
        "no READY: {seen:?}"
    );
    let pid = child.id().unwrap().to_string();
    (child, log, pid)
}

/// `systemctl reload` runs `cosell-sync reload --pid $MAINPID`: it must fail when the daemon
/// refuses the new configuration (a `kill -HUP` returns 0 whatever happens next).
#[tokio::test(flavor = "multi_thread")]
async fn the_reload_command_exits_with_the_daemons_answer() {
    let env = TestEnv::new().await;
    let (child, _log, pid) = ready_daemon(&env);

    let out = env.cli(&["reload", "--pid", &pid]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configuration reloaded\n"
    );

    // Valid keys, but a secret the daemon cannot read: the daemon refuses, and so does reload.
    let secret = env.sim.state.credentials.client_secret.clone();
    let good = std::fs::read_to_string(&env.config).unwrap();
    env.edit_config(|t| {
        t.replace(
            &format!("client_secret = \"{secret}\""),
            "client_secret_file = \"/nonexistent/secret\"",
        )
    });
    let out = env.cli(&["reload", "--pid", &pid]).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("reload refused") && err.contains("microsoft.client_secret_file"),
        "{err}"
    );

    // The daemon's own refusal of a wrong type (sent as systemd would, a bare SIGHUP, since
    // the command refuses such a file itself): the message names the file with its leading
    // slash although the daemon runs in `/`, and lists every bad key of the file at once.
    std::fs::write(
        &env.config,
        format!("{good}\n[sync]\nmax_attempts = \"five\"\nconcurrncy = 2\n"),
    )
    .unwrap();
    let result = env.dir.path().join("reload-result");
    let before = std::fs::read_to_string(&result).unwrap_or_default();
    kill(&child, "-HUP");
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(&result).is_ok_and(|now| now != before)
        })
        .await,
        "no reload outcome"
    );
    let refused = std::fs::read_to_string(&result).unwrap();
    let wanted = format!("(in {})", env.config.display());
    assert!(env.config.is_absolute());
    assert!(refused.contains("refused"), "{refused}");
    assert!(refused.contains(&wanted), "no {wanted:?} in {refused}");
    assert!(
        refused.contains("sync.max_attempts: expected a whole number"),
        "{refused}"
    );
    assert!(refused.contains("did you mean `concurrency`?"), "{refused}");

    // A file that does not even parse: refused before any signal, as a config error.
    std::fs::write(
        &env.config,
        format!("{good}\n[schedule]\nsync = \"not cron\"\n"),
    )
    .unwrap();
    let out = env.cli(&["reload", "--pid", &pid]).await;
    assert_eq!(out.status.code(), Some(78));

    // The daemon kept running through both refusals.
    std::fs::write(&env.config, &good).unwrap();
    let out = env.cli(&["reload", "--pid", &pid]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kill(&child, "-TERM");
}

/// Microsoft-only (no `[google]`): `status` does not count referrals as waiting to be planned
/// (nothing plans them), `/metrics` has no "without lead" series (so the
/// CosellReferralsExpiringWithoutLead rule cannot fire), and the `health` probe a container's
/// HEALTHCHECK runs exits 0 against the running daemon.
#[tokio::test(flavor = "multi_thread")]
async fn microsoft_only_status_metrics_and_the_health_probe() {
    let port = free_port();
    let env = TestEnv::with_extra(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).await;
    env.sim
        .put_referrals(sample::demo_set(12, chrono::Utc::now()));
    let (socket, mut child, _log) = start_run(&env);
    let mut seen = Vec::new();
    assert!(
        collect(
            &socket,
            &mut seen,
            "STATUS=last cycle ok",
            Duration::from_secs(20)
        ),
        "no cycle: {seen:?}"
    );

    let status = env.run(&["status"]).await;
    assert!(status.status.success(), "{status:?}");
    assert!(
        !status.stdout.contains("waiting to be planned"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("Google: off"), "{}", status.stdout);
    let json = env.run(&["status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["google_enabled"], false);
    assert_eq!(json["refresh"]["plan_queue"], 0);

    let (code, metrics) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("cosell_referrals_awaiting_response{"),
        "the awaiting gauges are there: {metrics}"
    );
    assert!(
        !metrics.contains("cosell_referrals_awaiting_response_without_lead{"),
        "{metrics}"
    );

    let probe = env.run(&["health"]).await;
    assert!(probe.status.success(), "{probe:?}");
    assert!(probe.stdout.starts_with("healthy:"), "{probe:?}");

    kill(&child, "-TERM");
    assert_eq!(child.wait().await.unwrap().code(), Some(0));

    // Nothing listening: 1; no [metrics] listen at all: a config error naming the key, 78.
    let probe = env.run(&["health", "--timeout", "2"]).await;
    assert_eq!(probe.status.code(), Some(1), "{probe:?}");
    assert!(probe.stderr.contains("no answer"), "{probe:?}");
    env.edit_config(|t| t.replace(&format!("listen = \"127.0.0.1:{port}\""), ""));
    let probe = env.run(&["health"]).await;
    assert_eq!(probe.status.code(), Some(78), "{probe:?}");
    assert!(
        probe.stderr.contains("metrics.listen is not set"),
        "{probe:?}"
    );
}

/// Issue 28, item 4: a reload is all or nothing. Adding `[metrics] listen` (bound only at
/// start) with an alerts change refuses the whole reload, naming the key and saying
/// "restart"; `reload` exits 1; nothing is applied. Without it, the rest reloads.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_needs_a_restart_is_refused_whole_naming_the_key() {
    let env = TestEnv::new().await;
    let (child, log, pid) = ready_daemon(&env);
    let port = free_port();
    let alerts = "\n[alerts]\nfailed_cycles = 4\n";
    env.write_config(&format!(
        "{alerts}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let out = env.cli(&["reload", "--pid", &pid]).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs a restart: metrics.listen"), "{err}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("configuration reloaded"), "{text}");

    // Without the restart-only key, the same change reloads.
    env.write_config(alerts);
    let out = env.cli(&["reload", "--pid", &pid]).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{err}");
    kill(&child, "-TERM");
}

/// Issue 28, item 5: `systemctl status` tells the story. While the first cycle runs, STATUS
/// says so (pages, writes); a quiet cycle right after a busy one keeps the busy one in view.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_line_shows_the_running_cycle_and_keeps_the_last_change() {
    let env = TestEnv::with_google("\n[schedule]\nsync = \"*/2 * * * * *\"\n").await;
    env.sim
        .put_referrals(sample::demo_set(12, chrono::Utc::now()));
    let (socket, mut child, _log) = start_run(&env);
    let mut seen = Vec::new();
    let busy = "STATUS=last cycle ok";
    assert!(
        collect(&socket, &mut seen, busy, Duration::from_secs(30)),
        "no cycle: {seen:?}"
    );
    let first = seen.last().unwrap().clone();
    assert!(
        first.contains(" written") && !first.contains("nothing new"),
        "{first}"
    );
    assert!(
        seen.iter()
            .any(|m| m.starts_with("STATUS=cycle running for ")),
        "no progress while the first cycle ran: {seen:?}"
    );
    assert!(
        collect(&socket, &mut seen, busy, Duration::from_secs(10)),
        "no second cycle: {seen:?}"
    );
    let quiet = seen.last().unwrap();
    let change = first.trim_start_matches("STATUS=last cycle ok at ");
    assert!(
        quiet.contains("nothing new; last change ") && quiet.ends_with(change),
        "the quiet cycle hides the first one: {quiet}\nfirst: {first}"
    );
    kill(&child, "-TERM");
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
}
