//! The action page, end to end against the daemon binary and the simulator: an expiry alert
//! carries `action_url`; its page shows the facts and the fixed form; a POST answers once;
//! forged, altered, expired and replayed links get 403 and cause no Partner Center request; a
//! double click, two people at once or the portal answering first make at most one PATCH; the
//! SSO header is required and recorded; the token never reaches the log or `status`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use cosell_sync::actions::LinkSigner;
use cosell_sync::sim::sample;
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{stdout, wait_until, wait_until_async, TestEnv};

/// The links' key in these tests (a file, so the test can sign its own forgeries).
pub(crate) const KEY: &str = "0123456789abcdef0123456789abcdef-test-key";

pub(crate) struct Page {
    pub env: TestEnv,
    pub server: MockServer,
    pub daemon: tokio::process::Child,
    pub public_url: String,
    pub log: std::path::PathBuf,
}

impl Drop for Page {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

/// Referrals `ids` with 3 h left (each crosses the 4 h threshold at once) and one past its
/// deadline ([`expired_id`]), the daemon with `[actions]` and a JSON alert sink.
pub(crate) async fn start(ids: std::ops::Range<usize>, extra: &str) -> Page {
    start_on(TestEnv::new().await, ids, extra).await
}

/// [`start`] on a given environment (one with the Google side, say).
pub(crate) async fn start_on(env: TestEnv, ids: std::ops::Range<usize>, extra: &str) -> Page {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let key = env.dir.path().join("links.key");
    std::fs::write(&key, KEY).unwrap();
    let public_url = format!("http://127.0.0.1:{port}/act");
    let section = format!(
        r#"
[actions]
listen = "127.0.0.1:{port}"
public_url = "{public_url}"
key_file = "{key}"
{extra}

[[alerts.webhook]]
url = "{hook}/hook"
format = "json"
"#,
        key = key.display(),
        hook = server.uri(),
    );
    env.edit_config(|t| format!("{t}{section}"));
    let now = Utc::now();
    let age = chrono::Duration::days(14) - chrono::Duration::hours(3);
    let expired = sample::referral(
        ids.start + 5000,
        now,
        chrono::Duration::days(15),
        "New",
        "Pending",
    );
    env.sim.put_referrals(
        ids.map(|i| sample::referral(i, now, age, "New", "Pending"))
            .chain([expired]),
    );
    let log = env.dir.path().join("daemon.log");
    let daemon = crate::daemon::spawn_run(&env, &env.dir.path().join("notify.sock"), &log);
    Page {
        env,
        server,
        daemon,
        public_url,
        log,
    }
}

/// The `action_url` of each referral's expiry alert, once all `n` arrived.
pub(crate) async fn action_urls(page: &Page, n: usize) -> BTreeMap<String, String> {
    let found = &std::sync::Mutex::new(BTreeMap::new());
    let arrived = wait_until_async(Duration::from_secs(60), || async move {
        let mut urls = BTreeMap::new();
        for request in page.server.received_requests().await.unwrap_or_default() {
            let alert: Value = serde_json::from_slice(&request.body).unwrap_or_default();
            if alert["kind"] == "referral_expiring" {
                let url = alert["action_url"]
                    .as_str()
                    .expect("an expiry alert has action_url");
                urls.insert(
                    alert["referral_id"].as_str().unwrap().to_string(),
                    url.to_string(),
                );
            }
        }
        let all = urls.len() >= n;
        *found.lock().unwrap() = urls;
        all
    })
    .await;
    let urls = found.lock().unwrap().clone();
    assert!(arrived, "alerts did not arrive: {urls:?}");
    urls
}

fn token_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

pub(crate) async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = cosell_sync::http::client_builder()
        .build()
        .unwrap()
        .get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post(url: &str, form: &[(&str, &str)], headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = cosell_sync::http::client_builder()
        .build()
        .unwrap()
        .post(url)
        .form(form);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The form as the page sends it: the hidden inputs of this link plus the choice.
async fn answer(url: &str, id: &str, action: &str, reason: &str) -> (u16, String) {
    let form = [
        ("token", token_of(url)),
        ("referral", id),
        ("action", action),
        ("reason", reason),
    ];
    post(url, &form, &[]).await
}

const REASON: &str = "No capacity to take this on now";

#[tokio::test(flavor = "multi_thread")]
async fn the_alert_links_to_a_page_that_declines_once() {
    let page = start(0..1, "").await;
    let urls = action_urls(&page, 1).await;
    let (id, url) = urls.iter().next().unwrap();
    assert!(url.starts_with(&format!("{}/", page.public_url)), "{url}");
    let (status, html) = get(url, &[]).await;
    assert_eq!(status, 200);
    let referral = page.env.sim.referral(id).unwrap();
    for fact in [
        referral["customerProfile"]["name"].as_str().unwrap(),
        referral["name"].as_str().unwrap(),
        "Time left",
        "Deadline",
        "Partner Center",
        "Google lead",
    ] {
        assert!(html.contains(&fact.replace('&', "&amp;")), "{fact} missing");
    }
    assert_eq!(html.matches("<form method=\"post\">").count(), 1);
    assert!(html.contains("<select id=\"reason\" name=\"reason\">"));
    assert!(html.contains(&format!("<option value=\"{REASON}\">")));

    let (status, html) = answer(url, id, "decline", REASON).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Declined"), "{html}");
    let patches = page.env.sim.applied_patches(id);
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].body[2],
        json!({"op":"replace","path":"/statusReason","value":REASON})
    );
    let audit = stdout(&page.env.run(&["audit", "--referral", id]).await);
    assert!(audit.contains("by: link"), "{audit}");

    // Answered: the page shows the outcome, a POST changes nothing.
    let (status, html) = get(url, &[]).await;
    assert_eq!(status, 200);
    assert!(
        html.contains("Declined") && !html.contains("<form"),
        "{html}"
    );
    let (status, _) = answer(url, id, "decline", REASON).await;
    assert_eq!(status, 200);
    let (status, _) = answer(url, id, "accept", "").await;
    assert_eq!(status, 409);
    assert_eq!(page.env.sim.applied_patches(id).len(), 1);

    // The token is a capability: never in the daemon's log, `status` or `alerts list`.
    let token = token_of(url);
    let log = std::fs::read_to_string(&page.log).unwrap();
    assert!(!log.contains(token), "token in the log");
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["alerts", "list", "--json"],
    ] {
        let out = stdout(&page.env.run(&args).await);
        assert!(!out.contains(token), "token in {args:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_altered_expired_and_replayed_links_get_403_and_no_request() {
    let page = start(100..102, "").await;
    let urls = action_urls(&page, 2).await;
    let mut it = urls.iter();
    let (a, url_a) = it.next().unwrap();
    let (_, url_b) = it.next().unwrap();
    let base = page.public_url.clone();
    let signer = LinkSigner::new(KEY.as_bytes(), &base);
    let stranger = LinkSigner::new(b"another-key-another-key-another-key!", &base);
    let deadline_a = Utc::now() + chrono::Duration::hours(2);
    let mut forged: Vec<(String, String)> = vec![
        // Another key; an expired link (the right key); a link for an id never sent.
        (stranger.url(a, deadline_a), a.clone()),
        (
            signer.url(a, Utc::now() - chrono::Duration::seconds(1)),
            a.clone(),
        ),
        (format!("{base}/"), a.clone()),
        (format!("{base}/not-a-token"), a.clone()),
    ];
    // Every single-character change of a real token.
    let token = token_of(url_a).to_string();
    for i in (0..token.len()).step_by(3) {
        let mut chars: Vec<char> = token.chars().collect();
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        forged.push((
            format!("{base}/{}", chars.into_iter().collect::<String>()),
            a.clone(),
        ));
    }
    for (url, id) in &forged {
        let (status, _) = get(url, &[]).await;
        assert!(status == 403 || status == 404, "GET {url}: {status}");
        let (status, _) = answer(url, id, "accept", "").await;
        assert!(
            status == 403 || status == 404 || status == 405,
            "POST {url}: {status}"
        );
    }
    // Replayed: B's link with A's form, A's link with B's hidden token.
    let (status, _) = answer(url_b, a, "accept", "").await;
    assert_eq!(status, 403);
    let replay = [
        ("token", token_of(url_b)),
        ("referral", a.as_str()),
        ("action", "accept"),
    ];
    assert_eq!(post(url_a, &replay, &[]).await.0, 403);
    // A reason not on the list, or no action: refused, nothing sent.
    assert_eq!(answer(url_a, a, "decline", "Because").await.0, 400);
    assert_eq!(answer(url_a, a, "maybe", "").await.0, 400);
    // A referral past its deadline: a valid signature (with a later expiry) does not help.
    let expired = sample::referral_id(100 + 5000);
    let late = signer.url(&expired, Utc::now() + chrono::Duration::hours(1));
    assert_eq!(get(&late, &[]).await.0, 403);
    assert_eq!(answer(&late, &expired, "decline", REASON).await.0, 403);
    assert!(
        page.env.sim.patches().is_empty(),
        "no Partner Center write for any forgery: {:?}",
        page.env.sim.patches()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn double_clicks_two_people_and_the_portal_first_make_at_most_one_patch() {
    let page = start(200..233, "").await;
    let urls = action_urls(&page, 33).await;
    let ids: Vec<&String> = urls.keys().collect();

    // A double click: both see Accepted, one PATCH.
    let (one, two) = tokio::join!(
        answer(&urls[ids[0]], ids[0], "accept", ""),
        answer(&urls[ids[0]], ids[0], "accept", "")
    );
    assert_eq!((one.0, two.0), (200, 200), "{}\n{}", one.1, two.1);
    assert!(one.1.contains("Accepted") && two.1.contains("Accepted"));
    assert_eq!(page.env.sim.applied_patches(ids[0]).len(), 1);

    // Two people, two answers: one PATCH; the other person is told what happened.
    let (one, two) = tokio::join!(
        answer(&urls[ids[1]], ids[1], "accept", ""),
        answer(&urls[ids[1]], ids[1], "decline", REASON)
    );
    let mut statuses = [one.0, two.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{}\n{}", one.1, two.1);
    assert_eq!(page.env.sim.applied_patches(ids[1]).len(), 1);

    // The portal first: the stale copy meets a 412, the re-read finds it declined.
    page.env.sim.edit_referral(ids[2], |r| {
        r["status"] = json!("Closed");
        r["substatus"] = json!("Declined");
        r["statusReason"] = json!("Declined in the portal");
    });
    let (status, html) = answer(&urls[ids[2]], ids[2], "accept", "").await;
    assert_eq!(status, 409, "{html}");
    assert!(html.contains("declined"), "{html}");
    assert!(page.env.sim.applied_patches(ids[2]).is_empty());

    // POST to PATCH sent: p95 within 1 s (the POST returns after the PATCH).
    let mut took = Vec::new();
    for id in &ids[3..] {
        let started = Instant::now();
        let (status, _) = answer(&urls[*id], id, "accept", "").await;
        assert_eq!(status, 200);
        took.push(started.elapsed());
    }
    took.sort();
    let p95 = took[(took.len() * 95).div_ceil(100) - 1];
    println!(
        "action page POST → PATCH answered ({} answers): p50 {:?}, p95 {:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        p95,
        took[took.len() - 1]
    );
    assert!(p95 <= Duration::from_secs(1), "p95 {p95:?}");
}

/// One executor: answers from the page and the lead creates (and write-backs) of the same
/// new referrals, racing in the daemon, never have more than `[sync] concurrency` remote
/// writes on the wire at once, Partner Center and Google together; every answer is sent once
/// and no row records a reason that did not happen.
#[tokio::test(flavor = "multi_thread")]
async fn answers_and_creates_share_one_executor_and_one_concurrency() {
    let env = TestEnv::with_google("concurrency = 1").await;
    // Slow enough that the answers arrive while the creates are still being sent.
    env.sim.set_create_latency(Duration::from_millis(100));
    env.sim.set_patch_latency(Duration::from_millis(100));
    let page = start_on(env, 600..610, "").await;
    let urls = action_urls(&page, 10).await;
    let answered = futures_util::future::join_all(
        urls.iter()
            .map(|(id, url)| async move { (id.clone(), answer(url, id, "accept", "").await) }),
    )
    .await;
    for (id, (status, html)) in &answered {
        assert_eq!(*status, 200, "{id}: {html}");
        assert_eq!(page_status(&page.env, id), "Active");
        assert_eq!(
            page.env
                .sim
                .applied_patches(id)
                .iter()
                .filter(|p| p.body[0]["path"] == "/status")
                .count(),
            1,
            "{id}: one answer PATCH"
        );
    }
    let env = &page.env;
    let all_linked = wait_until(Duration::from_secs(30), || {
        let open: i64 = env.query(
            "SELECT COUNT(*) FROM outbox WHERE state IN ('pending', 'in_flight')",
            |r| r.get(0),
        );
        let leads = env.sim.leads_per_external_id();
        open == 0 && urls.keys().all(|id| leads.get(id) == Some(&1))
    })
    .await;
    let log = || std::fs::read_to_string(&page.log).unwrap_or_default();
    assert!(all_linked, "{}", log());
    assert_eq!(
        env.sim.max_writes_in_flight(),
        1,
        "two executors: more writes on the wire than [sync] concurrency\n{}",
        log()
    );
    let wrong: i64 = env.query(
        "SELECT (SELECT COUNT(*) FROM outbox WHERE COALESCE(result, '') || COALESCE(last_error, '')
                  LIKE '%operator%' OR COALESCE(result, '') || COALESCE(last_error, '') LIKE '%taken again%')
              + (SELECT COUNT(*) FROM audit_log WHERE COALESCE(detail, '') LIKE '%operator%')",
        |r| r.get(0),
    );
    assert_eq!(wrong, 0, "a reason recorded that did not happen");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sso_header_is_required_and_recorded_as_the_actor() {
    let page = start(300..301, "actor_header = \"X-Forwarded-Email\"").await;
    let urls = action_urls(&page, 1).await;
    let (id, url) = urls.iter().next().unwrap();
    assert_eq!(get(url, &[]).await.0, 403);
    assert_eq!(get(url, &[("X-Forwarded-Email", "  ")]).await.0, 403);
    let form = [
        ("token", token_of(url)),
        ("referral", id.as_str()),
        ("action", "accept"),
    ];
    assert_eq!(post(url, &form, &[]).await.0, 403);
    assert!(page.env.sim.patches().is_empty());
    let who = [("X-Forwarded-Email", "ana@partner.example")];
    assert_eq!(get(url, &who).await.0, 200);
    let (status, html) = post(url, &form, &who).await;
    assert_eq!(status, 200, "{html}");
    let audit = stdout(&page.env.run(&["audit", "--referral", id]).await);
    assert!(audit.contains("by: ana@partner.example"), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_can_share_the_webhook_receivers_listener() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = TestEnv::new().await;
    let key = env.dir.path().join("links.key");
    std::fs::write(&key, KEY).unwrap();
    let public_url = format!("http://127.0.0.1:{port}/act");
    env.edit_config(|t| {
        format!(
            r#"{t}
[webhook]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}/partner-center/events"
certificate_url_prefixes = ["http://127.0.0.1:9/cert/"]

[actions]
listen = "127.0.0.1:{port}"
public_url = "{public_url}"
key_file = "{key}"
"#,
            key = key.display()
        )
    });
    let now = Utc::now();
    env.sim.put_referrals([sample::referral(
        500,
        now,
        chrono::Duration::days(2),
        "New",
        "Pending",
    )]);
    let id = sample::referral_id(500);
    let log = env.dir.path().join("daemon.log");
    let mut daemon = crate::daemon::spawn_run(&env, &env.dir.path().join("notify.sock"), &log);
    let url =
        LinkSigner::new(KEY.as_bytes(), &public_url).url(&id, now + chrono::Duration::days(1));
    // Served once the first tick stored the referral.
    let url = &url;
    let served = wait_until_async(Duration::from_secs(30), || async move {
        let client = cosell_sync::http::client_builder().build().unwrap();
        let r = client.get(url).send().await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        served,
        "the page never answered: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The receiver answers on the same port: an unsigned event is refused.
    let event = cosell_sync::http::client_builder()
        .build()
        .unwrap()
        .post(format!("http://127.0.0.1:{port}/partner-center/events"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(event.status().as_u16(), 401);
    assert_eq!(answer(url, &id, "accept", "").await.0, 200);
    assert_eq!(page_status(&env, &id), "Active");
    crate::daemon::kill(&daemon, "-TERM");
    let _ = daemon.wait().await;
}

fn page_status(env: &TestEnv, id: &str) -> String {
    env.sim.referral(id).unwrap()["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Issue 30 items 4 and 5: a form another site makes the signed-in colleague's browser send is
/// refused (403) and sends nothing; a proxy that appends leaves two actors, and which one is the
/// person cannot be known (400). A request with neither Origin nor Sec-Fetch-Site (curl) is
/// judged by its link alone, and the page's own origin passes.
#[tokio::test(flavor = "multi_thread")]
async fn cross_site_posts_and_ambiguous_actors_are_refused_and_send_nothing() {
    let page = start(310..311, "actor_header = \"X-Forwarded-Email\"").await;
    let urls = action_urls(&page, 1).await;
    let (id, url) = urls.iter().next().unwrap();
    let form = [
        ("token", token_of(url)),
        ("referral", id.as_str()),
        ("action", "decline"),
        ("reason", REASON),
    ];
    let ana = ("X-Forwarded-Email", "ana@partner.example");
    let ours = page.public_url.trim_end_matches("/act").to_string();
    for cross in [
        vec![
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        vec![("Origin", "https://evil.example")],
        vec![("Origin", "null")],
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Sec-Fetch-Site", "same-site")],
        vec![("Origin", ours.as_str()), ("Sec-Fetch-Site", "cross-site")],
    ] {
        let headers: Vec<_> = cross.iter().copied().chain([ana]).collect();
        let (status, html) = post(url, &form, &headers).await;
        assert_eq!(status, 403, "{cross:?}: {html}");
    }
    for actors in [
        vec![
            ("X-Forwarded-Email", "attacker@evil.example"),
            ("X-Forwarded-Email", "ana@partner.example"),
        ],
        vec![(
            "X-Forwarded-Email",
            "attacker@evil.example, ana@partner.example",
        )],
        vec![("X-Forwarded-Email", "ana@partner.example\tadmin")],
    ] {
        assert_eq!(get(url, &actors).await.0, 400, "GET {actors:?}");
        assert_eq!(post(url, &form, &actors).await.0, 400, "POST {actors:?}");
    }
    let long = format!("{}@partner.example", "a".repeat(250));
    assert_eq!(
        post(url, &form, &[("X-Forwarded-Email", &long)]).await.0,
        400
    );
    assert!(
        page.env.sim.patches().is_empty(),
        "a refused request reached Partner Center: {:?}",
        page.env.sim.patches()
    );
    // A link opened from chat is a cross-site GET: shown. Our own form's POST: answered.
    let from_chat = [ana, ("Sec-Fetch-Site", "cross-site")];
    assert_eq!(get(url, &from_chat).await.0, 200);
    let same = [
        ana,
        ("Origin", ours.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let (status, html) = post(url, &form, &same).await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(page.env.sim.applied_patches(id).len(), 1);
    let audit = stdout(&page.env.run(&["audit", "--referral", id]).await);
    assert!(audit.contains("by: ana@partner.example"), "{audit}");
    assert!(!audit.contains("attacker"), "{audit}");
}

async fn alerts_json(env: &TestEnv) -> Vec<Value> {
    let out = env.run(&["alerts", "list", "--json"]).await;
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// Issue 28: `alerts list --json` and `status --referral` show the link that answers a
/// referral, also for one alerted before `[actions]` was turned on (the link is signed when
/// shown, never stored).
#[tokio::test(flavor = "multi_thread")]
async fn a_referral_alerted_before_actions_were_enabled_gets_a_link_in_alerts_list_and_status() {
    let env = TestEnv::new().await;
    let now = Utc::now();
    env.sim.put_referrals(vec![sample::referral(
        0,
        now,
        chrono::Duration::days(14) - chrono::Duration::hours(20),
        "New",
        "Pending",
    )]);
    assert!(env.run(&["sync"]).await.status.success());
    let id = sample::referral_id(0);
    let before = alerts_json(&env).await;
    assert!(before[0].get("action_url").is_none(), "{before:?}");

    // [actions] turned on afterwards.
    let key = env.dir.path().join("links.key");
    std::fs::write(&key, KEY).unwrap();
    let base = "https://sync.example.com/act";
    env.write_config(&format!(
        "\n[actions]\nlisten = \"127.0.0.1:0\"\npublic_url = \"{base}\"\nkey_file = \"{}\"\n",
        key.display()
    ));
    let signer = LinkSigner::new(KEY.as_bytes(), base);
    let verified = |url: &str| {
        let token = url.strip_prefix(&format!("{base}/")).unwrap();
        signer.verify(token, Utc::now()).unwrap().referral_id
    };
    let after = alerts_json(&env).await;
    let url = after[0]["action_url"].as_str().expect("action_url");
    assert_eq!(verified(url), id);
    let out = env.run(&["status", "--referral", &id, "--json"]).await;
    let view: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(verified(view["action_url"].as_str().unwrap()), id);
    let text = stdout(&env.run(&["status", "--referral", &id]).await);
    assert!(text.contains(&format!("    {base}/")), "{text}");

    // Answered (in Partner Center): no link, no capability shown.
    let mut closed = sample::referral(
        0,
        now,
        chrono::Duration::days(14) - chrono::Duration::hours(20),
        "Closed",
        "Declined",
    );
    closed["updatedDateTime"] = Value::from(Utc::now().to_rfc3339());
    env.sim.put_referrals(vec![closed]);
    assert!(env.run(&["sync"]).await.status.success());
    let answered = alerts_json(&env).await;
    assert!(
        answered.iter().all(|a| a.get("action_url").is_none()),
        "{answered:?}"
    );
}

/// An answer from the page is sent by the executor at once, without a deadline tick: no
/// `cycle_runs` row, no alert evaluation (alerts and the service level keep their own
/// schedule), and the page answers once the executor recorded it (issue 26).
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_from_the_page_reaches_partner_center_without_a_cycle() {
    let page = start(900..901, "").await;
    let urls = action_urls(&page, 1).await;
    let (id, url) = urls.iter().next().unwrap();
    let cycles = || {
        page.env
            .query("SELECT COUNT(*), COUNT(finished_at) FROM cycle_runs", |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
    };
    // Idle: every tick begun has finished, and none began for a while.
    let mut last = cycles();
    let idle = wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(700));
        let now = cycles();
        let quiet = now == last && now.0 == now.1;
        last = now;
        quiet
    })
    .await;
    assert!(idle, "the daemon never went idle: {last:?}");
    let alerts = page.server.received_requests().await.unwrap().len();

    let (status, html) = answer(url, id, "accept", "").await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(page_status(&page.env, id), "Active");
    assert_eq!(page.env.sim.applied_patches(id).len(), 1);
    assert_eq!(cycles(), last, "the answer ran a deadline tick");
    let after = page.server.received_requests().await.unwrap().len();
    assert_eq!(
        after, alerts,
        "alerts were evaluated and sent for one answer"
    );
}
