//! Shared test helpers: a simulator with a config file pointing at it, and two ways to run a
//! command against it: [`TestEnv::run`] in this process (zero2prod's `spawn_app`: the same
//! `app::commands` functions `main` calls, no process start) and [`TestEnv::cli`], the binary,
//! for what needs a process (log output, signals, kills, the exit of `main` itself).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use cosell_sync::app::commands as cmd;
use cosell_sync::cli::{Cli, Command};
use cosell_sync::http::RateLimiter;
use cosell_sync::microsoft::{MicrosoftClient, TokenSource};
use cosell_sync::sim::aws::AwsSimulator;
use cosell_sync::sim::Simulator;

pub const BIN: &str = env!("CARGO_BIN_EXE_cosell-sync");

/// The link AWS invitations' alerts carry in tests (`[aws] invitation_url`).
pub const INVITATION_URL: &str = "https://partnercentral.example/invitations/{id}";

/// An `[aws]` section against `endpoint` with the simulator's key, quick retries, and
/// `extra` after it.
pub fn aws_section(endpoint: &str, extra: &str) -> String {
    format!(
        r#"
[aws]
endpoint = "{endpoint}"
catalog = "AWS"
access_key_id = "{key}"
secret_access_key = "{secret}"
invitation_url = "{INVITATION_URL}"
requests_per_second = 200

[aws.retry]
min_delay = "10ms"
max_delay = "50ms"
{extra}
"#,
        key = cosell_sync::sim::aws::ACCESS_KEY_ID,
        secret = cosell_sync::sim::aws::SECRET_ACCESS_KEY,
    )
}

/// A simulator, a temporary state directory and a config file for the binary.
pub struct TestEnv {
    pub sim: Simulator,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The AWS Partner Central simulator, with [`TestEnv::with_aws`].
    pub aws: Option<AwsSimulator>,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        Self::with_extra("").await
    }

    /// `extra` is appended to the generated config (more keys or tables).
    pub async fn with_extra(extra: &str) -> TestEnv {
        let sim = Simulator::start().await.expect("simulator starts");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let env = TestEnv {
            sim,
            dir,
            config,
            aws: None,
        };
        env.write_config(extra);
        env
    }

    /// A config with the Google side too (its key file beside the config).
    pub async fn with_google(extra: &str) -> TestEnv {
        let env = Self::with_extra("").await;
        let key = env.dir.path().join("google-key.json");
        std::fs::write(&key, env.sim.google_key_json()).unwrap();
        env.write_config(&format!(
            r#"
[google]
api_base = "{base}"
partner_id = "{partner}"
credentials_file = "{key}"
requests_per_second = 500

[google.lead]
submitter_email = "cosell@partner.example"
product_family = "GOOGLE_CLOUD_PLATFORM"

# Tests of the sync rules read every tracked Google record at each `sync`; the refresh
# schedule itself is tested with its own settings.
[refresh]
min_interval = "0s"

[sync]
retry_min = "10ms"
retry_max = "50ms"
{extra}
"#,
            base = env.sim.base_url(),
            partner = cosell_sync::sim::google::PARTNER_ID,
            key = key.display(),
        ));
        env
    }

    /// A config with an `[aws]` section against an AWS simulator of its own (`env.aws`),
    /// `[microsoft]` kept; `extra` is appended.
    pub async fn with_aws(extra: &str) -> TestEnv {
        let aws = AwsSimulator::start().await.expect("AWS simulator starts");
        let mut env = Self::with_extra(&aws_section(&aws.endpoint(), extra)).await;
        env.aws = Some(aws);
        env
    }

    /// [`TestEnv::with_google`] and [`TestEnv::with_aws`] together.
    pub async fn with_google_and_aws(extra: &str) -> TestEnv {
        let aws = AwsSimulator::start().await.expect("AWS simulator starts");
        let mut env = Self::with_google(&aws_section(&aws.endpoint(), extra)).await;
        env.aws = Some(aws);
        env
    }

    /// The AWS simulator of [`TestEnv::with_aws`].
    pub fn aws(&self) -> &AwsSimulator {
        self.aws.as_ref().expect("a TestEnv made with_aws")
    }

    pub fn write_config(&self, extra: &str) {
        let c = &self.sim.state.credentials;
        let text = format!(
            r#"
[state]
path = "{state}"

[log]
level = "info"

[microsoft]
api_base = "{base}"
authority = "{base}"
tenant = "{tenant}"
client_id = "{client_id}"
client_secret = "{secret}"
refresh_token = "{refresh}"
requests_per_second = 200

[microsoft.retry]
min_delay = "50ms"
max_delay = "500ms"
{extra}
"#,
            state = self.state_db().display(),
            base = self.sim.base_url(),
            tenant = c.tenant,
            client_id = c.client_id,
            secret = c.client_secret,
            refresh = c.refresh_token,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Rewrites the config file's text.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(text)).unwrap();
    }

    pub fn state_db(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// Runs the binary with this config and waits for it.
    pub async fn cli(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("COSELL_CONFIG")
            .output()
            .await
            .expect("binary runs")
    }

    /// Runs a command in this process, as `main` would: parsed by the same `Cli`, executed by
    /// the same `app::commands` function, its error shown as `main` shows it. Logs are not
    /// captured (no subscriber is installed): tests of log lines use [`TestEnv::cli`].
    ///
    /// With `IT_VIA_BINARY=1` every such call goes through the binary instead: the
    /// same suite then checks that both drivers agree, and times the difference.
    pub async fn run(&self, args: &[&str]) -> Ran {
        if std::env::var_os("IT_VIA_BINARY").is_some() {
            let out = self.cli(args).await;
            return Ran {
                status: Exit(out.status.code().unwrap_or(-1)),
                stdout: out.out(),
                stderr: out.err(),
            };
        }
        let config = self.config.display().to_string();
        let argv = ["cosell-sync", "--config", &config]
            .into_iter()
            .chain(args.iter().copied());
        let cli = match Cli::try_parse_checked(argv) {
            Ok(cli) => cli,
            Err(e) => {
                return Ran {
                    status: Exit(e.exit_code()),
                    stdout: String::new(),
                    stderr: e.to_string(),
                }
            }
        };
        match in_process(cli, &self.config).await {
            Ok(printed) => Ran {
                status: Exit(printed.code),
                stdout: printed.stdout,
                stderr: String::new(),
            },
            Err(e) => Ran {
                status: Exit(e.exit_code()),
                stdout: String::new(),
                stderr: format!("cosell-sync: {e}"),
            },
        }
    }

    /// A client against the simulator, as the daemon builds it.
    pub fn client(&self, token_file: &Path) -> MicrosoftClient {
        let c = &self.sim.state.credentials;
        let http = cosell_sync::http::client(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(5),
        );
        let tokens = TokenSource::new(
            http.clone(),
            &self.sim.base_url(),
            &c.tenant,
            c.client_id.clone(),
            Some(c.client_secret.clone().into()),
            Some(c.refresh_token.clone().into()),
            token_file.to_path_buf(),
        )
        .unwrap();
        MicrosoftClient::new(
            http,
            &self.sim.base_url(),
            Arc::new(tokens),
            Arc::new(RateLimiter::new(1000.0)),
        )
        .unwrap()
    }

    pub fn query<T>(&self, sql: &str, f: impl FnOnce(&rusqlite::Row) -> rusqlite::Result<T>) -> T {
        let conn = rusqlite::Connection::open(self.state_db()).unwrap();
        conn.query_row(sql, [], f).unwrap()
    }
}

/// The commands a test runs in process; `run` and `auth microsoft` need the binary.
async fn in_process(cli: Cli, file: &Path) -> cmd::Outcome {
    use cosell_sync::cli::AuthCommand;
    let dry_run = cli.is_dry_run();
    let config = cmd::load_config_for(&cli.command, file, dry_run)?;
    let answer_dry_run = cli.is_answer_dry_run();
    match cli.command {
        Command::Run { .. }
        | Command::Auth {
            action: AuthCommand::Microsoft,
        }
        | Command::Demo { .. }
        | Command::Sim { .. }
        | Command::Man
        | Command::Completions { .. } => {
            panic!("{:?} needs the binary: use TestEnv::cli", cli.command)
        }
        command => cmd::dispatch(command, config, file, dry_run, answer_dry_run).await,
    }
}

/// What an in-process command printed and its exit code (shaped like `Output`, so a test
/// reads the same with either driver).
#[derive(Debug)]
pub struct Ran {
    pub status: Exit,
    pub stdout: String,
    pub stderr: String,
}

/// The exit code of an in-process command.
#[derive(Debug, Clone, Copy)]
pub struct Exit(i32);

impl Exit {
    pub fn success(&self) -> bool {
        self.0 == 0
    }
    pub fn code(&self) -> Option<i32> {
        Some(self.0)
    }
}

/// The output of a command, in process or from the binary.
pub trait Captured {
    fn out(&self) -> String;
    fn err(&self) -> String;
}

impl Captured for Output {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl Captured for Ran {
    fn out(&self) -> String {
        self.stdout.clone()
    }
    fn err(&self) -> String {
        self.stderr.clone()
    }
}

pub fn stdout(o: &impl Captured) -> String {
    o.out()
}

pub fn stderr(o: &impl Captured) -> String {
    o.err()
}

/// [`wait_until`] for a check that awaits (a mock server's requests, an HTTP answer).
pub async fn wait_until_async<F, Fut>(within: std::time::Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    done().await
}

/// Waits until `done` holds (checked every 20 ms), at most `within`; whether it held.
/// Tests wait on a log line, a metric or a database row with this, never a fixed sleep.
pub async fn wait_until(within: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    done()
}
