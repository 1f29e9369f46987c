//! The README's systemd install, as the service's unprivileged user sees it: the directory
//! and file modes are read from the README itself, the layout is built in a temporary
//! directory (root-owned, as `install` run by root leaves it), and `check-config` runs as
//! `nobody` with `$CREDENTIALS_DIRECTORY` standing in for `LoadCredential=`.

use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::helpers::BIN;

const NOBODY: u32 = 65534;

/// The mode the README's systemd block gives `target` (`install [-d] -m MODE ... target`).
fn readme_mode(target: &str) -> u32 {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .filter(|l| l.trim_start().starts_with("install "))
        .find(|l| l.split_whitespace().any(|w| w == target))
        .unwrap_or_else(|| panic!("the README installs no {target}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "-m")
        .expect("install -m MODE");
    u32::from_str_radix(words[at + 1], 8).expect("an octal mode")
}

/// Whether this process may run children as another uid (root, with CAP_SETUID).
fn can_switch_user() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    std::process::Command::new("true")
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .is_ok_and(|s| s.success())
}

/// The documented layout under `root`: `etc/` (config dir and file as the README installs
/// them, owned by root), `credentials/` (what systemd hands the service: owned by it, 0400)
/// and `state/` (the `StateDirectory=`, owned by the service, with a stored refresh token).
struct Layout {
    _dir: tempfile::TempDir,
    config: PathBuf,
    credentials: PathBuf,
    state: PathBuf,
}

fn documented_layout(dir_mode: u32, file_mode: u32) -> Layout {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    set_mode(root, 0o755);
    let etc = root.join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = etc.join("config.toml");
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap();
    let state = root.join("state");
    // The example's state.path is the systemd StateDirectory; here it is the temporary one.
    let example = example.replace(
        "path = \"/var/lib/cosell-sync/state.db\"",
        &format!("path = \"{}\"", state.join("state.db").display()),
    );
    assert!(
        example.contains(&*state.to_string_lossy()),
        "state.path replaced"
    );
    // The example's all-zeros client_id is refused as a placeholder: the operator's own.
    let example = example.replace(
        "client_id = \"00000000-0000-0000-0000-000000000000\"",
        "client_id = \"00000000-0000-0000-0000-00000000c0de\"",
    );
    std::fs::write(&config, example).unwrap();
    set_mode(&config, file_mode);
    set_mode(&etc, dir_mode);

    let credentials = root.join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    for (name, text) in [
        ("microsoft-client-secret", "s3cret\n".to_string()),
        // A well-formed service-account key (check-config parses it); nothing is contacted.
        (
            "google-key.json",
            cosell_sync::sim::google::key_json("http://127.0.0.1:9"),
        ),
    ] {
        let f = credentials.join(name);
        std::fs::write(&f, text).unwrap();
        set_mode(&f, 0o400);
        chown(&f, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    set_mode(&credentials, 0o500);
    chown(&credentials, Some(NOBODY), Some(NOBODY)).unwrap();

    std::fs::create_dir(&state).unwrap();
    let token = state.join("microsoft-refresh-token");
    std::fs::write(&token, "stored-refresh-token").unwrap();
    set_mode(&token, 0o600);
    chown(&token, Some(NOBODY), Some(NOBODY)).unwrap();
    set_mode(&state, 0o700);
    chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    Layout {
        _dir: dir,
        config,
        credentials,
        state,
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn check_config_as_nobody(layout: &Layout) -> Output {
    std::process::Command::new(BIN)
        .arg("--config")
        .arg(&layout.config)
        .arg("check-config")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CREDENTIALS_DIRECTORY", &layout.credentials)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap()
}

#[test]
fn check_config_works_as_the_service_user_with_the_readme_layout() {
    if !can_switch_user() {
        eprintln!("SKIPPED: needs root (CAP_SETUID) to run check-config as nobody");
        return;
    }
    let layout = documented_layout(
        readme_mode("/etc/cosell-sync"),
        readme_mode("/etc/cosell-sync/config.toml"),
    );
    let out = check_config_as_nobody(&layout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[redacted]"), "{stdout}");
    assert!(!stdout.contains("s3cret"), "{stdout}");
    assert!(layout.state.exists());
}

#[test]
fn an_unreadable_config_is_reported_as_a_permission_error() {
    if !can_switch_user() {
        eprintln!("SKIPPED: needs root (CAP_SETUID) to run check-config as nobody");
        return;
    }
    // The old README's modes: a 0750 directory, then a 0640 file in a 0755 one.
    for (dir_mode, file_mode) in [(0o750, 0o640), (0o755, 0o640)] {
        let layout = documented_layout(dir_mode, file_mode);
        let out = check_config_as_nobody(&layout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(
            stderr.contains("permission denied") && !stderr.contains("does not exist"),
            "{dir_mode:o}/{file_mode:o}: {stderr}"
        );
        assert!(
            stderr.contains(&*layout.config.to_string_lossy()),
            "{stderr}"
        );
    }
}

#[test]
fn the_units_documentation_is_installed_by_the_readme() {
    let root = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(format!("{root}/systemd/cosell-sync.service")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let docs: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!docs.is_empty(), "the unit has no Documentation=");
    for doc in docs {
        let installed = if let Some(page) = doc.strip_prefix("man:") {
            let (name, section) = page.trim_end_matches(')').split_once('(').unwrap();
            readme.contains(&format!(
                "cosell-sync man > /usr/local/share/man/man{section}/{name}.{section}"
            ))
        } else if let Some(path) = doc.strip_prefix("file://") {
            readme.contains(path)
        } else {
            false
        };
        assert!(installed, "{doc}: the README's install does not create it");
    }
    // The unit does not override the config's state.path behind the operator's back.
    assert!(!unit.contains("COSELL_STATE__PATH"), "{unit}");
}

/// `auth check` in a root shell rotates the refresh token into the service's state directory:
/// the new file must stay the service's, or the next start fails "permission denied" for good.
#[tokio::test(flavor = "multi_thread")]
async fn auth_check_as_root_leaves_the_rotated_token_to_the_state_directorys_owner() {
    if !can_switch_user() {
        eprintln!("SKIPPED: needs root (CAP_SETUID) to own the state directory as nobody");
        return;
    }
    let env = crate::helpers::TestEnv::new().await;
    set_mode(env.dir.path(), 0o755);
    let state = env.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    set_mode(&state, 0o700);
    chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    let db = env.state_db().display().to_string();
    let moved = state.join("state.db").display().to_string();
    env.edit_config(|text| text.replace(&db, &moved));
    set_mode(&env.config, 0o644);

    let out = env.cli(&["auth", "check"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let token = state.join("microsoft-refresh-token");
    let meta = std::fs::metadata(&token).expect("the rotated token is stored");
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o600));

    // The service (nobody) goes on with the token root's check left it.
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&env.config)
        .arg("sync")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The unit as docs/operations.md promises it: a start that keeps failing can trip the start
/// limit, the reload reports refusals, and no secret is a required credential.
#[test]
fn the_unit_stops_restart_loops_and_reports_refused_reloads() {
    let root = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(format!("{root}/systemd/cosell-sync.service")).unwrap();
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    let secs = |text: &str| -> u64 {
        let (n, unit) = text.split_at(
            text.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len()),
        );
        n.parse::<u64>().unwrap()
            * match unit {
                "min" => 60,
                "h" => 3600,
                "s" | "" => 1,
                u => panic!("unit {u}"),
            }
    };
    let burst: u64 = value("StartLimitBurst")[0].parse().unwrap();
    let interval = secs(&value("StartLimitIntervalSec")[0]);
    let restart = secs(&value("RestartSec")[0]);
    // Each failed start takes up to ~90 s of first-token retries, then RestartSec.
    assert!(
        burst * (restart + 90) < interval,
        "{burst} starts of up to {}s never fit in {interval}s: the limit never trips",
        restart + 90
    );
    // The limit counts the operator's restarts too: ten in five minutes, after the first
    // start, must leave the service up (issue 28), with room to spare.
    assert!(
        burst >= 15,
        "StartLimitBurst={burst}: ten restarts would trip it"
    );
    // A missing credential file (243/CREDENTIALS) is not fixed by restarting every 30 s.
    let prevent = value("RestartPreventExitStatus").join(" ");
    assert!(
        prevent.split_whitespace().any(|s| s == "243") && prevent.contains("78"),
        "RestartPreventExitStatus={prevent}"
    );
    assert!(
        value("ExecReload")[0].contains("reload --pid $MAINPID"),
        "{unit}"
    );
    // Every secret is a credential, and none is required (spec §8: the shipped unit starts for
    // an AWS-only partner, who has no Microsoft secret): each LoadCredential= has a blank
    // SetCredential= default, which systemd uses when the file is missing instead of
    // refusing the start (243).
    let credentials = value("LoadCredential");
    let ids: Vec<&str> = credentials
        .iter()
        .map(|c| c.split(':').next().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "microsoft-client-secret",
            "microsoft-refresh-token",
            "google-key.json",
            "aws-secret-access-key",
            "aws-session-token"
        ],
        "{credentials:?}"
    );
    for (id, credential) in ids.iter().zip(&credentials) {
        assert_eq!(
            *credential,
            format!("{id}:/etc/cosell-sync/credentials/{id}"),
            "the credential is the file of its name in credentials/"
        );
        assert!(
            value("SetCredential").contains(&format!("{id}:\\n")),
            "LoadCredential={credential} has no blank SetCredential= default: a missing file would fail the start"
        );
    }
    // The docs give the package's path for the first sign-in.
    let ops = std::fs::read_to_string(format!("{root}/docs/operations.md")).unwrap();
    let line = "/usr/bin/cosell-sync --config /etc/cosell-sync/config.toml auth microsoft";
    assert!(ops.contains(line), "docs/operations.md lacks {line}");
    // The real-systemd test runs the documented first sign-in.
    let test = std::fs::read_to_string(format!("{root}/contrib/systemd-test/run.sh")).unwrap();
    assert!(test.contains("--property=LoadCredential=microsoft-client-secret:/etc/cosell-sync/credentials/microsoft-client-secret"));
}

/// The container image's HEALTHCHECK and its documented one-off first sign-in are real
/// commands of this binary (a rename would leave the image probing or signing in with a
/// command that no longer exists), and the build context leaves target/ and .git out.
#[test]
fn the_containerfile_probes_and_signs_in_with_real_commands() {
    use cosell_sync::cli::{AuthCommand, Cli, Command};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::read_to_string(root.join("contrib/Containerfile")).unwrap();

    // HEALTHCHECK ... CMD ["/usr/local/bin/cosell-sync", "health"]
    let check = file
        .split("\nHEALTHCHECK ")
        .nth(1)
        .expect("a HEALTHCHECK instruction");
    let cmd = check.split("CMD").nth(1).unwrap().lines().next().unwrap();
    let argv: Vec<String> = serde_json::from_str(cmd.trim()).unwrap();
    assert_eq!(argv[0], "/usr/local/bin/cosell-sync");
    let cli = Cli::try_parse_checked(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(matches!(cli.command, Command::Health { .. }), "{argv:?}");

    // The first sign-in is a one-off `podman run ... cosell-sync auth microsoft` on the
    // state volume, never an `exec` into a daemon that exits 78 without a token.
    let sign_in = file
        .lines()
        .find(|l| l.contains("cosell-sync auth microsoft"))
        .expect("a documented first sign-in");
    let words: Vec<&str> = sign_in.trim_start_matches('#').split_whitespace().collect();
    let cli = Cli::try_parse_checked(["cosell-sync", words[1], words[2]]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Auth {
            action: AuthCommand::Microsoft
        }
    ));
    assert!(!file.contains("podman exec"), "exec into what? {file}");
    assert!(file.contains("--chown=65532:65532 /out/state /var/lib/cosell-sync"));

    let ignore = std::fs::read_to_string(root.join(".containerignore")).unwrap();
    for needed in ["target/", ".git/"] {
        assert!(ignore.lines().any(|l| l.trim() == needed), "{needed}");
    }
}

/// Issue 28: the documented way to write a secret file works under `sh` (dash on Debian),
/// not only bash (`<<<` failed there): each documented line, run by `sh` against a
/// temporary directory, writes the secret with mode 0600.
#[test]
fn the_documented_secret_file_command_works_under_sh() {
    use std::os::unix::fs::PermissionsExt;
    let root = env!("CARGO_MANIFEST_DIR");
    let mut found = 0;
    for doc in ["README.md", "docs/operations.md"] {
        let text = std::fs::read_to_string(format!("{root}/{doc}")).unwrap();
        // The command may be wrapped over two lines inside backticks in the prose.
        let joined = text.replace("\n   ", " ");
        for line in joined.lines().filter(|l| l.contains("/dev/stdin")) {
            let command = line
                .split('`')
                .find(|part| part.contains("/dev/stdin"))
                .unwrap_or(line)
                .trim();
            let dir = tempfile::tempdir().unwrap();
            let command = command.replace(
                "/etc/cosell-sync/credentials",
                &dir.path().display().to_string(),
            );
            let mut sh = std::process::Command::new("sh");
            sh.args(["-c", &command]).env("SECRET", "s3cret value");
            let out = sh.output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{doc}: `{command}` under sh: {err}"
            );
            // The file the command names (the Microsoft secret, the AWS one, ...).
            let name = command.rsplit('/').next().unwrap().trim();
            let file = dir.path().join(name);
            assert_eq!(
                std::fs::read_to_string(&file).unwrap().trim_end(),
                "s3cret value",
                "{doc}"
            );
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{doc}");
            found += 1;
        }
    }
    assert!(found >= 2, "the documented commands were not found");
}
