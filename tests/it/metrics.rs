//! `/metrics` as Prometheus reads it: the daemon's exposition after a real cycle, parsed with a
//! strict OpenMetrics parser (types, HELP, histogram buckets, `# EOF`), and every metric the
//! shipped Grafana dashboard and alert rules name present in it.

use std::collections::BTreeSet;
use std::time::Duration;

use cosell_sync::sim::{sample, Fault};
use openmetrics_parser::{MetricFamily, OpenMetricsType, OpenMetricsValue};

use crate::daemon::{collect, free_port, kill, start_run};
use crate::helpers::TestEnv;

type Family = MetricFamily<OpenMetricsType, OpenMetricsValue>;

/// The value of the family's sample whose labels include every pair of `labels`.
fn value<'a>(family: &'a Family, labels: &[(&str, &str)]) -> Option<&'a OpenMetricsValue> {
    family
        .iter_samples()
        .find(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| &s.value)
}

fn number(v: &OpenMetricsValue) -> f64 {
    match v {
        OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
        OpenMetricsValue::Counter(c) => c.value.as_f64(),
        other => panic!("not a number: {other:?}"),
    }
}

/// Names like `cosell_…`/`process_…` a PromQL text mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["cosell_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// `promtool check metrics` (Debian's `prometheus` package ships it; `.ci/run` installs it
/// and sets `PROMTOOL_REQUIRED=1`) accepts the scrape: what a Prometheus server and its
/// linter make of it. Without promtool this says so and checks nothing more.
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let required = std::env::var("PROMTOOL_REQUIRED").is_ok_and(|v| v == "1");
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        assert!(!required, "PROMTOOL_REQUIRED=1 but promtool is not on PATH");
        let _ = writeln!(
            std::io::stderr(),
            "promtool check skipped: not on PATH (Debian: apt-get install prometheus)"
        );
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_openmetrics_with_histograms_and_process_metrics() {
    let port = free_port();
    // The first cycle waits for the first tick, so a scripted 503 meets its first request
    // (a retry, which is what brings the retries family into being).
    let env = TestEnv::with_google(&format!(
        "\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[daemon]\nsync_on_start = false\n\n[schedule]\nsync = \"*/2 * * * * *\"\n"
    ))
    .await;
    env.sim
        .put_referrals(sample::demo_set(12, chrono::Utc::now()));
    let (socket, mut child, _log) = start_run(&env);
    let mut seen = Vec::new();
    assert!(
        collect(&socket, &mut seen, "READY=1", Duration::from_secs(20)),
        "no READY: {seen:?}"
    );
    env.sim.script_faults([Fault::Unavailable]);
    assert!(
        collect(
            &socket,
            &mut seen,
            "STATUS=last cycle ok",
            Duration::from_secs(30)
        ),
        "no cycle: {seen:?}"
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    let client = cosell_sync::http::client_builder().build().unwrap();
    // As Prometheus asks.
    let response = client
        .get(&url)
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{text}"));
    let families = &exposition.families;
    let family = |name: &str| {
        families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in:\n{text}"))
    };
    for (name, f) in families {
        assert!(!f.help.trim().is_empty(), "{name} has no HELP");
    }
    // Issue 28: prometheus-client appends the period, so a help text ending in one read "..".
    let doubled: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("# HELP") && l.ends_with(".."))
        .collect();
    assert!(
        doubled.is_empty(),
        "HELP texts ending in '..': {doubled:#?}"
    );
    // Without asking for OpenMetrics (`curl`, promtool): the Prometheus text format.
    let classic = client.get(&url).send().await.unwrap();
    assert!(
        classic.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        classic.headers()
    );
    promtool_check_metrics(&classic.text().await.unwrap());

    // Real histograms for cycle and request durations.
    let cycle = family("cosell_cycle_duration_seconds");
    assert_eq!(cycle.family_type, OpenMetricsType::Histogram);
    let Some(OpenMetricsValue::Histogram(h)) = value(cycle, &[]) else {
        panic!("cycle duration is not a histogram")
    };
    assert!(h.count >= Some(1), "{h:?}");
    assert!(h.buckets.len() > 5, "{h:?}");
    let requests = family("cosell_api_request_duration_seconds");
    assert_eq!(requests.family_type, OpenMetricsType::Histogram);
    let Some(OpenMetricsValue::Histogram(h)) =
        value(requests, &[("api", "google"), ("method", "POST")])
    else {
        panic!("no google POST request durations")
    };
    assert!(h.count.unwrap() >= 1);

    let api = family("cosell_api_requests");
    assert_eq!(api.family_type, OpenMetricsType::Counter);
    assert!(
        number(
            value(
                api,
                &[("api", "microsoft"), ("method", "GET"), ("status", "200")]
            )
            .unwrap()
        ) >= 1.0
    );
    let cycles = family("cosell_cycles");
    assert!(number(value(cycles, &[("outcome", "ok")]).unwrap()) >= 1.0);
    assert!(number(value(family("cosell_retries"), &[]).unwrap()) >= 1.0);

    let now = chrono::Utc::now().timestamp() as f64;
    let last_success = number(value(family("cosell_last_success_timestamp_seconds"), &[]).unwrap());
    assert!(
        (now - last_success).abs() < 120.0,
        "{last_success} vs {now}"
    );
    let lane = number(
        value(
            family("cosell_lane_last_run_timestamp_seconds"),
            &[("lane", "deadline")],
        )
        .unwrap(),
    );
    assert!((now - lane).abs() < 120.0);
    assert_eq!(
        family("cosell_lane_duration_seconds").family_type,
        OpenMetricsType::Histogram
    );

    let build = family("cosell_build_info");
    assert_eq!(build.family_type, OpenMetricsType::Gauge);
    assert!(value(build, &[("version", env!("CARGO_PKG_VERSION"))]).is_some());

    // Process metrics.
    assert_eq!(
        family("process_cpu_seconds").family_type,
        OpenMetricsType::Counter
    );
    assert!(number(value(family("process_resident_memory_bytes"), &[]).unwrap()) > 1e6);
    assert!(number(value(family("process_open_fds"), &[]).unwrap()) >= 3.0);

    // State gauges from the database.
    let outbox = family("cosell_outbox_actions");
    assert!(number(value(outbox, &[("kind", "create_lead"), ("state", "done")]).unwrap()) >= 1.0);
    let awaiting = family("cosell_referrals_awaiting_response");
    let without = family("cosell_referrals_awaiting_response_without_lead");
    for bucket in ["expired", "lt_4h", "lt_24h", "lt_72h", "gte_72h"] {
        let all = number(value(awaiting, &[("time_left", bucket)]).unwrap());
        let unlinked = number(value(without, &[("time_left", bucket)]).unwrap());
        assert!(unlinked <= all, "{bucket}: {unlinked} > {all}");
    }
    assert_eq!(number(value(family("cosell_healthy"), &[]).unwrap()), 1.0);

    // The service level: the sample's referral past its deadline is counted (from the
    // database), and the answer-time histogram has both outcomes before any answer.
    let expired = family("cosell_referrals_expired_unanswered");
    assert_eq!(expired.family_type, OpenMetricsType::Counter);
    assert!(number(value(expired, &[]).unwrap()) >= 1.0);
    let answered = family("cosell_referral_response_seconds");
    assert_eq!(answered.family_type, OpenMetricsType::Histogram);
    for outcome in ["accepted", "declined"] {
        assert!(
            value(answered, &[("outcome", outcome)]).is_some(),
            "{outcome}"
        );
    }

    // Every metric the dashboard and the alert rules use exists (renames break this test).
    let mut exposed: BTreeSet<String> = BTreeSet::new();
    for (name, f) in families {
        exposed.insert(name.clone());
        match f.family_type {
            OpenMetricsType::Counter => {
                exposed.insert(format!("{name}_total"));
            }
            OpenMetricsType::Histogram => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exposed.insert(format!("{name}{suffix}"));
                }
            }
            OpenMetricsType::Info => {
                exposed.insert(format!("{name}_info"));
            }
            _ => {}
        }
    }
    for file in [
        "contrib/grafana/cosell-sync.json",
        "contrib/prometheus/cosell-sync.rules.yml",
    ] {
        let contrib =
            std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let used = metric_names(&contrib);
        assert!(used.len() > 5, "{file}: {used:?}");
        let unknown: Vec<_> = used.difference(&exposed).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics /metrics lacks: {unknown:?}"
        );
    }
    kill(&child, "-TERM");
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
}
