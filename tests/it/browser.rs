//! A real browser on the action page: headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over chromedriver's WebDriver HTTP API, opens the link from a
//! real expiry alert, picks a reason, presses Decline, and the simulator shows the PATCH; the
//! same browser made to post the form from another origin is refused and sends nothing.
//! Without a browser this test says why it skipped; `BROWSER_TEST_REQUIRED=1` (set by
//! `.ci/run`) makes a missing browser a failure. `BROWSER_TEST_SCREENSHOT=1` rewrites
//! `docs/action-page.png`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::actions::{action_urls, start};

/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// chromedriver on a free port; killed on drop.
struct Driver {
    child: std::process::Child,
    url: String,
    http: reqwest::Client,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(
        chromium: &std::path::Path,
        driver: &std::path::Path,
        profile: &std::path::Path,
    ) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut d = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: cosell_sync::http::client_builder().build().unwrap(),
            session: String::new(),
        };
        let until = Instant::now() + Duration::from_secs(20);
        while d
            .http
            .get(format!("{}/status", d.url))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < until, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=420,900",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args}
        }}});
        let session = d.call("POST", "/session", Some(caps)).await;
        d.session = session["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        d
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.url)
        } else {
            format!("{}/session/{}{path}", self.url, self.session)
        };
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(
            answer["value"]["error"].is_null(),
            "webdriver {path}: {answer}"
        );
        answer["value"].clone()
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        match v[ELEMENT].as_str() {
            Some(id) => id.to_string(),
            None => panic!("no element {css}: {v}"),
        }
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call("POST", &format!("/element/{id}/click"), None)
            .await;
    }

    async fn source(&self) -> String {
        self.call("GET", "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_declines_from_the_alert_link() {
    let Some((chromium, driver)) = browser_and_driver() else {
        return;
    };
    let page = start(400..402, "").await;
    let urls = action_urls(&page, 2).await;
    let mut it = urls.iter();
    let (id, url) = it.next().unwrap();
    let (other_id, other_url) = it.next().unwrap();
    let profile = tempfile::tempdir().unwrap();
    let browser = Driver::start(&chromium, &driver, profile.path()).await;

    // Issue 30: another site's page (another port: same site, another origin) makes the
    // browser post a valid form for the other referral. Refused; nothing reaches Partner Center.
    let evil = wiremock::MockServer::start().await;
    let form = format!(
        "<!doctype html><form method=post action=\"{other_url}\">\
         <input name=token value=\"{}\"><input name=referral value=\"{other_id}\">\
         <input name=action value=decline><input name=reason value=\"Deal size too small\">\
         </form><script>document.forms[0].submit()</script>",
        other_url.rsplit('/').next().unwrap()
    );
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_raw(form, "text/html"))
        .mount(&evil)
        .await;
    browser
        .call(
            "POST",
            "/url",
            Some(json!({"url": format!("{}/win", evil.uri())})),
        )
        .await;
    let until = Instant::now() + Duration::from_secs(20);
    while !browser.source().await.contains("sent from another site") {
        assert!(Instant::now() < until, "{}", browser.source().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(page.env.sim.applied_patches(other_id).is_empty());
    browser
        .call("POST", "/url", Some(json!({"url": url})))
        .await;
    assert!(browser.source().await.contains("Decline referral"));
    screenshot(&browser, "action-page.png").await;
    let reason = "Customer is outside our region";
    browser
        .click(&format!("select[name=reason] option[value=\"{reason}\"]"))
        .await;
    browser.click("button[name=action][value=decline]").await;
    let until = Instant::now() + Duration::from_secs(20);
    while !browser.source().await.contains("Declined") {
        assert!(
            Instant::now() < until,
            "no outcome page: {}",
            browser.source().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let patches = page.env.sim.applied_patches(id);
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].body[1]["value"], "Declined");
    assert_eq!(patches[0].body[2]["value"], reason);
    browser.call("DELETE", "", None).await;
}

/// The inbox in a real browser (spec §7): the actor header set as the SSO proxy would (over
/// the DevTools protocol), three referrals checked and declined with a reason → three
/// PATCHes, and the results page lists three outcomes. `BROWSER_TEST_SCREENSHOT=1` rewrites
/// `docs/inbox.png`.
#[tokio::test(flavor = "multi_thread")]
async fn a_browser_declines_three_referrals_from_the_inbox() {
    let Some((chromium, driver)) = browser_and_driver() else {
        return;
    };
    let extra = r#"actor_header = "X-Forwarded-Email"

[[rules]]
name = "outside-territory"
not_countries = ["US", "CA"]
action = "decline"
reason = "Customer is outside our region"
"#;
    let page = start(410..416, extra).await;
    action_urls(&page, 6).await;
    let profile = tempfile::tempdir().unwrap();
    let browser = Driver::start(&chromium, &driver, profile.path()).await;
    let inbox = format!("{}/inbox", page.public_url);
    // Without the header: 403.
    browser
        .call("POST", "/url", Some(json!({"url": inbox})))
        .await;
    assert!(
        browser.source().await.contains("Sign in"),
        "{}",
        browser.source().await
    );
    for (cmd, params) in [
        ("Network.enable", json!({})),
        (
            "Network.setExtraHTTPHeaders",
            json!({"headers": {"X-Forwarded-Email": "ana@partner.example"}}),
        ),
    ] {
        browser
            .call(
                "POST",
                "/goog/cdp/execute",
                Some(json!({"cmd": cmd, "params": params})),
            )
            .await;
    }
    // In two of about ten full runs (once beside the nspawn test, once in a fresh clone's
    // `.ci/run`) this first navigation with the header did not show the inbox; 12 runs of
    // this test under load and two full runs did not reproduce it, so the cause is not known
    // (the DevTools header arriving late is the guess). A few tries, each logged with what
    // the page showed; a page that never shows the inbox with the header still fails.
    let mut shown = String::new();
    for _ in 0..5 {
        browser
            .call("POST", "/url", Some(json!({"url": inbox})))
            .await;
        shown = browser.source().await;
        if shown.contains("Co-sell inbox") {
            break;
        }
        eprintln!("the inbox did not show yet: {shown}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(shown.contains("Co-sell inbox"), "{shown}");
    screenshot(&browser, "inbox.png").await;
    let ids: Vec<String> = (410..413)
        .map(cosell_sync::sim::sample::referral_id)
        .collect();
    for id in &ids {
        browser
            .click(&format!("input[name=referral][value=\"{id}\"]"))
            .await;
    }
    let reason = "Deal size too small";
    browser
        .click(&format!("select[name=reason] option[value=\"{reason}\"]"))
        .await;
    browser.click("button[name=action][value=decline]").await;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let source = browser.source().await;
        if source.matches("<strong>sent</strong>").count() == 3 {
            break;
        }
        assert!(Instant::now() < until, "no results page: {source}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        browser.call("POST", "/refresh", None).await;
    }
    for id in &ids {
        let patches = page.env.sim.applied_patches(id);
        assert_eq!(patches.len(), 1, "{id}: {patches:?}");
        assert_eq!(patches[0].body[2]["value"], reason);
    }
    assert_eq!(page.env.sim.patches().len(), 3);
    browser.call("DELETE", "", None).await;
}

/// A screenshot of what the browser shows (it must be a PNG), written to `docs/NAME` for the
/// README when `BROWSER_TEST_SCREENSHOT=1`.
async fn screenshot(browser: &Driver, name: &str) {
    let shot = browser.call("GET", "/screenshot", None).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    if std::env::var("BROWSER_TEST_SCREENSHOT").is_ok_and(|v| v == "1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name);
        std::fs::write(docs, &png).unwrap();
    }
}

/// Chromium and its driver from PATH; `None` (the test skips, saying why on stderr) when
/// either is missing, unless `BROWSER_TEST_REQUIRED=1` makes that a failure.
fn browser_and_driver() -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var("BROWSER_TEST_REQUIRED").is_ok_and(|v| v == "1");
    let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = on_path(&["chromedriver"]);
    if let (Some(chromium), Some(driver)) = (chromium, driver) {
        return Some((chromium, driver));
    }
    let why = "chromium or chromedriver is not on PATH (Debian: apt-get install chromium chromium-driver)";
    assert!(!required, "BROWSER_TEST_REQUIRED=1 but {why}");
    // Straight to stderr: the test harness captures `eprintln!` of a passing test.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "browser test skipped: {why}");
    None
}
