//! The AWS-only set-up (spec §8): `[microsoft]` optional with `[aws]` (check-config, `sync`
//! and `run` without a Microsoft request), the config errors of a file with neither inbox or
//! with `[google]`/`[webhook]` but no `[microsoft]`, `auth check` against the AWS simulator
//! (where the credentials came from, AccessDenied naming the IAM action, a wrong secret), the
//! warning for an inline secret in a config others can read, and rule reasons over 80 chars.
//!
//! "No Microsoft request" is measured, not assumed: every command runs with `HTTP(S)_PROXY`
//! at a local listener that counts connections (and `NO_PROXY` for 127.0.0.1, where the
//! simulators are), so a request to Entra or Partner Center's real hosts would land there;
//! a Microsoft-on control run shows that it does.

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cosell_sync::sim::aws::{AwsSimulator, ACCESS_KEY_ID, SECRET_ACCESS_KEY};

use crate::daemon::collect;
use crate::helpers::{stderr, stdout, wait_until, TestEnv, BIN};

/// A listener that counts the connections made to it (and closes each at once).
struct Trap {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Trap {
    async fn start() -> Trap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        Trap { url, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The binary with `config`, every remote host behind `trap`, no AWS variables of the
/// machine's own (HOME is the test's directory: no `~/.aws/credentials` either).
fn command(config: &Path, trap: &Trap, home: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("--config").arg(config).args(args);
    for var in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "https_proxy",
        "http_proxy",
    ] {
        cmd.env(var, &trap.url);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("HOME", home)
        .env_remove("RUST_LOG")
        .env_remove("COSELL_CONFIG");
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

async fn cli(env: &TestEnv, trap: &Trap, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = command(&env.config, trap, env.dir.path(), args);
    cmd.envs(vars.iter().copied());
    cmd.output().await.expect("binary runs")
}

/// An AWS-only configuration (no `[microsoft]`) for `aws`, with `aws_keys` in `[aws]` and
/// `extra` after it; `SECRET_FILE` in either names the key's secret, in a 0600 file.
fn write_aws_only(env: &TestEnv, aws: &AwsSimulator, aws_keys: &str, extra: &str) {
    use std::os::unix::fs::PermissionsExt;
    let secret = env.dir.path().join("aws-secret");
    std::fs::write(&secret, format!("{SECRET_ACCESS_KEY}\n")).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        r#"
[state]
path = "{state}"

[aws]
endpoint = "{endpoint}"
{aws_keys}
{extra}
"#,
        state = env.state_db().display(),
        endpoint = aws.endpoint(),
    )
    .replace("SECRET_FILE", &secret.display().to_string());
    std::fs::write(&env.config, text).unwrap();
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn sim_keys() -> String {
    format!("access_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key_file = \"SECRET_FILE\"")
}

/// A former Microsoft set-up's rotated token in the state directory: a Microsoft side that
/// ran anyway would redeem it.
fn leave_a_token_file(env: &TestEnv) {
    std::fs::write(env.dir.path().join("microsoft-refresh-token"), "old-token").unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aws_only_config_passes_check_config_and_sync_runs_without_microsoft() {
    let env = TestEnv::new().await;
    let aws = AwsSimulator::start().await.unwrap();
    let trap = Trap::start().await;
    write_aws_only(&env, &aws, &sim_keys(), "");
    leave_a_token_file(&env);

    let out = cli(&env, &trap, &["check-config"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(printed.contains("Microsoft is off"), "{printed}");
    assert!(printed.contains("[aws]"), "{printed}");
    assert!(!printed.contains("[microsoft]\n"), "{printed}");

    let out = cli(&env, &trap, &["sync"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        trap.hits(),
        0,
        "a Microsoft request was made: {}",
        stderr(&out)
    );

    let out = cli(&env, &trap, &["auth", "microsoft"], &[]).await;
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("[microsoft] is not configured"),
        "{}",
        stderr(&out)
    );
    assert_eq!(trap.hits(), 0);

    // The control: with [microsoft] at its real hosts, the same trap sees the grant.
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{text}\n[microsoft]\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"11111111-2222-3333-4444-555555555555\"\n"),
    )
    .unwrap();
    let out = cli(&env, &trap, &["auth", "check"], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(trap.hits() > 0, "the trap must catch a Microsoft request");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_starts_aws_only_without_asking_for_a_microsoft_token() {
    let env = TestEnv::new().await;
    let aws = AwsSimulator::start().await.unwrap();
    let trap = Trap::start().await;
    write_aws_only(&env, &aws, &sim_keys(), "");
    leave_a_token_file(&env);
    let notify = env.dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let log = env.dir.path().join("daemon.log");
    let mut child = command(&env.config, &trap, env.dir.path(), &["run"])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let ready = collect(&socket, &mut seen, "READY=1", Duration::from_secs(20));
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ready, "no READY: {seen:?}\n{}", text());
    assert!(
        wait_until(Duration::from_secs(20), || text()
            .contains("cycle finished"))
        .await,
        "{}",
        text()
    );
    crate::daemon::kill(&child, "-TERM");
    assert_eq!(child.wait().await.unwrap().code(), Some(0), "{}", text());
    assert_eq!(trap.hits(), 0, "a Microsoft request was made:\n{}", text());
    assert!(text().contains("Microsoft is off"), "{}", text());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_microsoft_neither_inbox_google_or_webhook_is_a_config_error_naming_it() {
    let env = TestEnv::new().await;
    let aws = AwsSimulator::start().await.unwrap();
    let trap = Trap::start().await;
    let keys = sim_keys();
    let google = "[google]\npartner_id = \"1234567\"\ncredentials_file = \"/nonexistent\"\n";
    let webhook =
        "[webhook]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://sync.example/events\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (String::new(), "", "microsoft is missing, and so is [aws]"),
        (
            keys.clone(),
            google,
            "google.partner_id is set, but [microsoft] is not",
        ),
        (keys.clone(), webhook, "webhook: needs [microsoft]"),
        (
            keys.clone(),
            "[[rules]]\nname = \"far\"\naction = \"decline\"\nreason = \"REASON\"\n",
            "rules[0].reason is 81 characters long; AWS takes at most 80",
        ),
    ];
    for (aws_keys, extra, expected) in cases {
        let extra = extra.replace("REASON", &"x".repeat(81));
        write_aws_only(&env, &aws, &aws_keys, &extra);
        if aws_keys.is_empty() {
            // Not even an [aws] section.
            let text = std::fs::read_to_string(&env.config).unwrap();
            let cut = text.find("[aws]").unwrap();
            std::fs::write(&env.config, &text[..cut]).unwrap();
        }
        let out = cli(&env, &trap, &["check-config"], &[]).await;
        // Messages wrap at 80 columns, continued with four spaces.
        let err = stderr(&out).replace("\n    ", " ");
        assert_eq!(out.status.code(), Some(78), "{expected}: {err}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
    // The shipped config's [google] tables without a partner id are inert: no error.
    write_aws_only(
        &env,
        &aws,
        &keys,
        "[google]\n\n[google.lead]\nsubmitter_email = \"x@y.example\"\n",
    );
    let out = cli(&env, &trap, &["check-config"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A rule limited to Microsoft referrals keeps a longer reason (it never goes to AWS)...
    let long = "x".repeat(81);
    write_aws_only(
        &env,
        &aws,
        &keys,
        &format!("[microsoft]\ntenant = \"t\"\nclient_id = \"c\"\nrefresh_token = \"r\"\n\n[[rules]]\nname = \"ms\"\nsource = \"microsoft\"\naction = \"decline\"\nreason = \"{long}\"\n"),
    );
    let out = cli(&env, &trap, &["check-config"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // ...and the environment alone turns Microsoft on: then its keys are required.
    write_aws_only(&env, &aws, &keys, "");
    let out = cli(
        &env,
        &trap,
        &["check-config"],
        &[("COSELL_MICROSOFT__TENANT", "t")],
    )
    .await;
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("microsoft.client_id is missing"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_check_reads_aws_once_and_says_where_the_credentials_came_from() {
    let env = TestEnv::new().await;
    let aws = AwsSimulator::start().await.unwrap();
    let trap = Trap::start().await;
    aws.allow_key("AKIDFROMENV", "env-secret", Some("env-session"));
    aws.allow_key("AKIDTEAM", "team-secret", None);
    let shared = env.dir.path().join("shared-credentials");
    std::fs::write(
        &shared,
        "[default]\naws_access_key_id = AKIDNOBODY\naws_secret_access_key = nope\n\n[team]\naws_access_key_id = AKIDTEAM\naws_secret_access_key = team-secret\n",
    )
    .unwrap();
    let shared_path = shared.display().to_string();
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        (
            sim_keys(),
            vec![],
            format!("access key {ACCESS_KEY_ID} from [aws] in the configuration"),
        ),
        (
            String::new(),
            vec![
                ("AWS_ACCESS_KEY_ID", "AKIDFROMENV"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                ("AWS_SESSION_TOKEN", "env-session"),
            ],
            "access key AKIDFROMENV from the AWS_* environment".into(),
        ),
        (
            String::new(),
            vec![
                ("AWS_SHARED_CREDENTIALS_FILE", shared_path.as_str()),
                ("AWS_PROFILE", "team"),
            ],
            format!(
                "access key AKIDTEAM from the shared credentials file {shared_path} (profile team)"
            ),
        ),
    ];
    for (keys, vars, source) in cases {
        write_aws_only(&env, &aws, &keys, "");
        let before = aws.counter("ListEngagementInvitations");
        let out = cli(&env, &trap, &["auth", "check"], &vars).await;
        let printed = stdout(&out);
        assert_eq!(out.status.code(), Some(0), "{printed}{}", stderr(&out));
        assert!(
            printed.contains(&format!("ok      aws: {source}")),
            "{printed}"
        );
        assert!(printed.contains("skip    microsoft"), "{printed}");
        assert_eq!(aws.counter("ListEngagementInvitations"), before + 1);
    }
    assert_eq!(trap.hits(), 0);

    // A wrong secret: the simulator refuses the signature, and the line says so.
    write_aws_only(
        &env,
        &aws,
        &format!("access_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key_file = \"SECRET_FILE\""),
        "",
    );
    std::fs::write(env.dir.path().join("aws-secret"), "not-the-secret\n").unwrap();
    let out = cli(&env, &trap, &["auth", "check"], &[]).await;
    let printed = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("FAILED  aws: access key")
            && printed.contains("AWS refused the request's signature")
            && printed.contains("InvalidSignatureException"),
        "{printed}"
    );
    assert_eq!(aws.counter("refused:InvalidSignatureException"), 1);

    // AccessDenied: exit 1, the IAM action named.
    write_aws_only(&env, &aws, &sim_keys(), "");
    aws.deny("ListEngagementInvitations");
    let out = cli(&env, &trap, &["auth", "check"], &[]).await;
    let printed = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("access denied")
            && printed.contains("must allow partnercentral:ListEngagementInvitations"),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inline_secret_in_a_config_others_can_read_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new().await;
    let aws = AwsSimulator::start().await.unwrap();
    let trap = Trap::start().await;
    let inline =
        format!("access_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key = \"{SECRET_ACCESS_KEY}\"");
    let microsoft = "[microsoft]\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret = \"s3cret\"\nrefresh_token_file = \"SECRET_FILE\"\n";
    write_aws_only(&env, &aws, &inline, microsoft);
    let warned = |err: &str, key: &str| {
        err.lines()
            .any(|l| l.contains(&format!("{key}: ")) && l.contains("is readable by other users"))
    };
    for (mode, expected) in [(0o644, true), (0o640, true), (0o600, false)] {
        std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = cli(&env, &trap, &["check-config"], &[]).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert_eq!(
            warned(&err, "aws.secret_access_key"),
            expected,
            "{mode:o}: {err}"
        );
        assert_eq!(
            warned(&err, "microsoft.client_secret"),
            expected,
            "{mode:o}: {err}"
        );
        // From a file, not inline: not this warning.
        assert!(!warned(&err, "microsoft.refresh_token"), "{err}");
        assert!(
            !err.contains(SECRET_ACCESS_KEY) && !err.contains("s3cret"),
            "{err}"
        );
    }
    // The same secret from the environment is not in the file: no warning.
    write_aws_only(
        &env,
        &aws,
        &format!("access_key_id = \"{ACCESS_KEY_ID}\""),
        "",
    );
    let vars = [("COSELL_AWS__SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)];
    let out = cli(&env, &trap, &["check-config"], &vars).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !warned(&stderr(&out), "aws.secret_access_key"),
        "{}",
        stderr(&out)
    );
}

/// Under systemd, a secret file missing from `credentials/` arrives as the unit's blank
/// `SetCredential=` default: the config error names the key and the file to create (and the
/// unit, not restarting on 78, waits for the operator).
#[tokio::test(flavor = "multi_thread")]
async fn a_blank_credential_names_its_key_and_the_missing_file() {
    let env = TestEnv::new().await;
    let aws = AwsSimulator::start().await.unwrap();
    let trap = Trap::start().await;
    let keys = format!(
        "access_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key_file = \"aws-secret-access-key\""
    );
    write_aws_only(&env, &aws, &keys, "");
    let credentials = env.dir.path().join("run-credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("aws-secret-access-key"), "\n").unwrap();
    let dir = credentials.display().to_string();
    let out = cli(
        &env,
        &trap,
        &["check-config"],
        &[("CREDENTIALS_DIRECTORY", &dir)],
    )
    .await;
    let err = stderr(&out).replace("\n    ", " ");
    assert_eq!(out.status.code(), Some(78), "{err}");
    let expected = format!(
        "aws.secret_access_key_file: {dir}/aws-secret-access-key is empty (the unit's blank default: is {}/credentials/aws-secret-access-key missing?",
        env.dir.path().display()
    );
    assert!(err.contains(&expected), "{err}");
}
