//! Configuration loading, in its own binary because it changes the process environment
//! (figment's `Jail` serialises those tests and restores everything afterwards).

// figment::Jail closures return figment::Error, which is large; that is the library's shape.
#![allow(clippy::result_large_err)]

use cosell_sync::config::{Config, ConfigErrors, RuleAction, TriageMode};
use figment::Jail;
use secrecy::ExposeSecret;

const GOOD: &str = r#"
[state]
path = "state/state.db"

[microsoft]
tenant = "contoso.onmicrosoft.com"
client_id = "app-id"
client_secret = "s3cret-inline"
refresh_token = "first-refresh-token"
"#;

fn load(jail: &Jail) -> Result<Config, ConfigErrors> {
    Config::load(&jail.directory().join("config.toml")).map(|l| l.config)
}

fn messages(errors: ConfigErrors) -> Vec<String> {
    errors.0.iter().map(ToString::to_string).collect()
}

#[test]
fn a_complete_file_loads_with_defaults_filled_in() {
    Jail::expect_with(|jail| {
        jail.create_file("config.toml", GOOD)?;
        let config = load(jail).unwrap();
        assert_eq!(config.schedule.sync, "0 */5 * * * *");
        assert_eq!(
            config.microsoft.api_base,
            "https://api.partner.microsoft.com"
        );
        assert_eq!(config.alerts.response_window.0.as_secs(), 14 * 86_400);
        assert_eq!(
            config.microsoft.client_secret.unwrap().expose_secret(),
            "s3cret-inline"
        );
        Ok(())
    });
}

#[test]
fn the_example_config_is_valid() {
    Jail::expect_with(|jail| {
        let example = include_str!("../config.example.toml");
        // The example points secrets at files; give it those files.
        jail.create_file("config.toml", example)?;
        let dir = jail.directory().to_path_buf();
        jail.set_env("CREDENTIALS_DIRECTORY", dir.display());
        jail.create_file("microsoft-client-secret", "from-file\n")?;
        jail.create_file("microsoft-refresh-token", "rt-from-file\n")?;
        jail.set_env("COSELL_STATE__PATH", dir.join("state.db").display());
        // As shipped, its client_id is the all-zeros placeholder: refused, naming the key.
        let e = load(jail).unwrap_err().to_string();
        assert!(
            e.contains("microsoft.client_id") && e.contains("placeholder"),
            "{e}"
        );
        jail.set_env(
            "COSELL_MICROSOFT__CLIENT_ID",
            "00000000-0000-0000-0000-00000000c0de",
        );
        let config = load(jail).unwrap_or_else(|e| panic!("config.example.toml: {e}"));
        assert_eq!(
            config.microsoft.client_secret.unwrap().expose_secret(),
            "from-file"
        );
        Ok(())
    });
}

#[test]
fn each_validation_error_names_its_key() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            r#"
[schedule]
sync = "*/5 * * * *"
[microsoft]
client_id = "x"
page_size = 500
requests_per_second = 0
api_base = "ftp://example"
"#,
        )?;
        let errors = messages(load(jail).unwrap_err());
        let expect = [
            "schedule.sync: invalid cron expression",
            "microsoft.tenant is missing",
            "microsoft.refresh_token is missing",
            "microsoft.page_size: must be between 1 and 100",
            "microsoft.requests_per_second: must be a positive number",
            "microsoft.api_base: \"ftp://example\" must be an http(s) URL",
        ];
        for e in expect {
            assert!(
                errors.iter().any(|m| m.starts_with(e)),
                "no {e:?} in {errors:#?}"
            );
        }
        Ok(())
    });
}

#[test]
fn unknown_keys_and_bad_durations_name_the_key() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            &format!("{GOOD}\n[alerts]\nresponse_window = \"two weeks\"\n"),
        )?;
        let errors = messages(load(jail).unwrap_err());
        assert!(
            errors[0].starts_with("alerts.response_window:"),
            "{errors:?}"
        );

        jail.create_file(
            "config.toml",
            &format!("{GOOD}\n[alerts]\nthresold = [\"4h\"]\n"),
        )?;
        let errors = messages(load(jail).unwrap_err());
        assert!(errors[0].contains("thresold"), "{errors:?}");
        Ok(())
    });
}

#[test]
fn env_overrides_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file("config.toml", GOOD)?;
        jail.set_env("COSELL_MICROSOFT__TENANT", "fabrikam.onmicrosoft.com");
        jail.set_env("COSELL_SCHEDULE__SYNC", "0 0 * * * *");
        jail.set_env("COSELL_ALERTS__THRESHOLDS", "[\"48h\", \"2h\"]");
        // COSELL_CONFIG names the file; it is not a config key.
        jail.set_env("COSELL_CONFIG", "ignored-here.toml");
        let config = load(jail).unwrap();
        assert_eq!(
            config.microsoft.tenant.as_deref(),
            Some("fabrikam.onmicrosoft.com")
        );
        assert_eq!(config.schedule.sync, "0 0 * * * *");
        assert_eq!(config.alerts.thresholds.len(), 2);
        assert_eq!(config.alerts.thresholds[0].0.as_secs(), 48 * 3600);
        Ok(())
    });
}

#[test]
fn secret_files_are_read_and_relative_ones_come_from_credentials_directory() {
    Jail::expect_with(|jail| {
        let creds = jail.directory().join("creds");
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::write(creds.join("ms-secret"), "secret-from-credential\n").unwrap();
        jail.create_file("beside-config", "not this one\n")?;
        std::fs::create_dir_all(jail.directory().join("credentials")).unwrap();
        jail.create_file("credentials/beside-config", "secret-beside-config\n")?;
        let base = GOOD.replace(
            "client_secret = \"s3cret-inline\"",
            "client_secret_file = \"ms-secret\"",
        );
        jail.create_file("config.toml", &base)?;
        jail.set_env("CREDENTIALS_DIRECTORY", creds.display());
        let config = load(jail).unwrap();
        assert_eq!(
            config.microsoft.client_secret.unwrap().expose_secret(),
            "secret-from-credential"
        );

        // Without CREDENTIALS_DIRECTORY a relative path is taken in `credentials/` beside the
        // config file: the directory the unit's LoadCredential= lines copy from.
        jail.set_env("CREDENTIALS_DIRECTORY", "");
        jail.create_file("config.toml", &base.replace("ms-secret", "beside-config"))?;
        let config = load(jail).unwrap();
        assert_eq!(
            config.microsoft.client_secret.unwrap().expose_secret(),
            "secret-beside-config"
        );

        // Both forms at once is a mistake, named.
        jail.create_file(
            "config.toml",
            &GOOD.replace(
                "client_id = \"app-id\"",
                "client_id = \"app-id\"\nclient_secret_file = \"beside-config\"",
            ),
        )?;
        let errors = messages(load(jail).unwrap_err());
        assert!(
            errors[0].starts_with("microsoft.client_secret: both"),
            "{errors:?}"
        );

        // A missing file is named with its key.
        jail.create_file("config.toml", &base.replace("ms-secret", "nope"))?;
        let errors = messages(load(jail).unwrap_err());
        assert!(
            errors[0].starts_with("microsoft.client_secret_file: cannot read"),
            "{errors:?}"
        );
        Ok(())
    });
}

#[test]
fn redacted_output_never_shows_secrets() {
    Jail::expect_with(|jail| {
        jail.create_file("config.toml", GOOD)?;
        let config = load(jail).unwrap();
        let text = config.redacted_toml();
        assert!(!text.contains("s3cret-inline"), "{text}");
        assert!(!text.contains("first-refresh-token"), "{text}");
        assert!(text.contains("[redacted]"));
        assert!(
            !format!("{config:?}").contains("s3cret-inline"),
            "Debug must not leak either"
        );
        Ok(())
    });
}

#[test]
fn stray_cosell_variables_that_are_not_keys_leave_the_config_valid() {
    Jail::expect_with(|jail| {
        jail.create_file("config.toml", GOOD)?;
        jail.set_env("COSELL_LOG", "debug");
        jail.set_env("COSELL_CONFIG", "/somewhere/else.toml");
        jail.set_env("COSELL_SOMETHING", "1");
        jail.set_env("COSELL_LOG__LEVEL", "debug");
        let config = load(jail).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.log.level, "debug", "a real key still applies");
        Ok(())
    });
}

/// Issue 21: three bad values take one run, each with its key, what it takes in plain words
/// and, for a misspelt key or word, the nearest right one.
#[test]
fn bad_values_are_reported_together_in_plain_words() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            &format!(
                "{GOOD}
[sync]
concurrncy = 8
max_attempts = \"five\"
retry_min = true

[log]
format = \"jsn\"

[refresh]
reads_per_hour = -1
"
            ),
        )?;
        let errors = messages(load(jail).unwrap_err());
        let expect = [
            "sync.concurrncy is not a key of [sync]",
            "sync.max_attempts: expected a whole number from 0 to 4294967295, got \"five\"",
            "log.format: \"jsn\" is not one of \"text\", \"json\" or \"journald\"",
            "refresh.reads_per_hour: expected a whole number from 0 to 18446744073709551615, got -1",
        ];
        for e in expect {
            assert!(
                errors.iter().any(|m| m.starts_with(e)),
                "no {e:?} in {errors:#?}"
            );
        }
        let quoted = errors
            .iter()
            .find(|m| m.starts_with("sync.retry_min"))
            .unwrap();
        assert!(quoted.contains("expected a duration in quotes"), "{quoted}");
        let typo = errors.iter().find(|m| m.contains("concurrncy")).unwrap();
        assert!(typo.ends_with("did you mean `concurrency`?"), "{typo}");
        let format = errors.iter().find(|m| m.starts_with("log.format")).unwrap();
        assert!(format.ends_with("did you mean \"json\"?"), "{format}");
        for m in &errors {
            for rust in ["expected u32", "u64", "struct ", "untagged", "``"] {
                assert!(!m.contains(rust), "Rust's words in {m:?}");
            }
            assert!(m.matches('`').count() <= 2, "nested backticks in {m:?}");
        }
        Ok(())
    });
}

#[test]
fn a_value_where_a_table_belongs_and_a_misspelt_section_are_explained() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            &format!("log = \"debug\"\n{GOOD}\n[sycn]\nconcurrency = 2\n[refresh]\nconcurrency = \"2\"\n"),
        )?;
        let errors = messages(load(jail).unwrap_err());
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with("log: expected a table like [log], got \"debug\"")),
            "{errors:#?}"
        );
        assert!(
            errors.iter().any(|m| m.starts_with("refresh.concurrency:")
                && m.ends_with("; write it without quotes: 2")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with("sycn is not a section")
                    && m.ends_with("did you mean [sync]?")),
            "{errors:#?}"
        );
        Ok(())
    });
}

/// A value from the environment names the variable, not the file.
#[test]
fn a_bad_value_from_the_environment_names_the_variable() {
    Jail::expect_with(|jail| {
        jail.create_file("config.toml", GOOD)?;
        jail.set_env("COSELL_SYNC__MAX_ATTEMPTS", "lots");
        let errors = messages(load(jail).unwrap_err());
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with("sync.max_attempts:")
                    && m.contains("COSELL_SYNC__MAX_ATTEMPTS")),
            "{errors:#?}"
        );
        Ok(())
    });
}

/// systemd runs the daemon in `/`: figment showed the file relative to the working
/// directory, so a reload refused under systemd named `etc/cosell-sync/config.toml`.
#[test]
fn the_file_named_in_an_error_keeps_its_leading_slash() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            &format!("{GOOD}\n[sync]\nmax_attempts = \"five\"\n"),
        )?;
        let file = jail.directory().join("config.toml");
        assert!(file.is_absolute());
        std::env::set_current_dir("/").unwrap(); // the jail restores the working directory
        let errors = messages(Config::load(&file).unwrap_err());
        let wanted = format!("(in {})", file.display());
        assert!(
            errors.iter().any(|m| m.contains(&wanted)),
            "no {wanted:?} in {errors:#?}"
        );
        Ok(())
    });
}

#[test]
fn durations_take_spelled_units_and_say_which_forms_work() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            &format!("{GOOD}\n[daemon]\nshutdown_grace = \"30 seconds\"\n[alerts]\nresponse_window = \"2 weeks\"\n"),
        )?;
        let config = load(jail).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.daemon.shutdown_grace.0.as_secs(), 30);
        assert_eq!(config.alerts.response_window.0.as_secs(), 14 * 86_400);

        jail.create_file(
            "config.toml",
            &format!("{GOOD}\n[daemon]\nshutdown_grace = \"30 fortnights\"\nstuck_after = true\n"),
        )?;
        let errors = messages(load(jail).unwrap_err());
        let grace = errors
            .iter()
            .find(|m| m.starts_with("daemon.shutdown_grace:"))
            .unwrap_or_else(|| panic!("{errors:#?}"));
        assert!(grace.contains("use 30s, 5m, 2h or 1d"), "{grace}");
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with("daemon.stuck_after: expected a duration")),
            "{errors:#?}"
        );
        Ok(())
    });
}

#[test]
fn time_zones_by_name_are_accepted_and_a_typo_gets_a_suggestion() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            &format!("{GOOD}\n[alerts]\ntimezone = \"Europe/Berlin\"\n"),
        )?;
        let config = load(jail).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.alerts.timezone, "Europe/Berlin");

        jail.create_file(
            "config.toml",
            &format!("{GOOD}\n[alerts]\ntimezone = \"Europe/Berln\"\n"),
        )?;
        let errors = messages(load(jail).unwrap_err());
        assert!(
            errors.iter().any(|m| m.starts_with("alerts.timezone:")
                && m.ends_with("did you mean \"Europe/Berlin\"?")),
            "{errors:#?}"
        );
        Ok(())
    });
}

#[test]
fn two_bad_items_of_one_list_are_each_named_by_their_own_index() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            &format!(
                "{GOOD}
[alerts]
thresholds = [\"1d\", \"-5h\", \"99999999999d\", \"2h\"]
"
            ),
        )?;
        let errors = messages(load(jail).unwrap_err());
        let at = |key: &str| errors.iter().filter(|m| m.starts_with(key)).count();
        // Removing the first bad item shifted the second one down: both were "[1]".
        assert_eq!(at("alerts.thresholds[1]:"), 1, "{errors:#?}");
        assert_eq!(at("alerts.thresholds[2]:"), 1, "{errors:#?}");
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with("alerts.thresholds[2]:") && m.contains("too large")),
            "{errors:#?}"
        );
        Ok(())
    });
}

// ---- [aws] (spec §4, §8) ----

#[test]
fn an_aws_section_loads_with_its_credentials_and_prints_no_secret() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            &format!(
                "{GOOD}
[aws]
catalog = \"Sandbox\"
access_key_id = \"AKIDEXAMPLE\"
secret_access_key_file = \"aws-secret-access-key\"
invitation_url = \"https://partnercentral.example/invitations/{{id}}\"
"
            ),
        )?;
        let dir = jail.directory().to_path_buf();
        jail.set_env("CREDENTIALS_DIRECTORY", dir.display());
        jail.create_file("aws-secret-access-key", "aws-s3cret-from-file\n")?;
        // The keys in [aws] come before the environment (§8's order).
        jail.set_env("AWS_ACCESS_KEY_ID", "AKIDFROMENV");
        jail.set_env("AWS_SECRET_ACCESS_KEY", "env-secret");
        let config = load(jail).unwrap();
        let aws = config.aws.as_ref().expect("[aws] is on");
        assert_eq!(aws.catalog(), "Sandbox");
        assert_eq!(aws.requests_per_second(), 10.0, "the default read rate");
        let credentials = aws.credentials().unwrap();
        assert_eq!(credentials.access_key_id, "AKIDEXAMPLE");
        assert_eq!(
            credentials.secret_access_key.expose_secret(),
            "aws-s3cret-from-file"
        );
        let printed = config.redacted_toml();
        assert!(printed.contains("[aws]"), "{printed}");
        assert!(!printed.contains("aws-s3cret-from-file"), "{printed}");
        Ok(())
    });
}

#[test]
fn aws_credentials_come_from_the_environment_when_the_section_has_none() {
    Jail::expect_with(|jail| {
        // No [aws] in the file: the section comes from the environment (spec §4).
        jail.create_file("config.toml", GOOD)?;
        jail.set_env("COSELL_AWS__CATALOG", "Sandbox");
        jail.set_env("AWS_ACCESS_KEY_ID", "AKIDFROMENV");
        jail.set_env("AWS_SECRET_ACCESS_KEY", "env-secret");
        jail.set_env("AWS_SESSION_TOKEN", "env-token");
        let config = load(jail).unwrap();
        let aws = config.aws.expect("[aws] is on from the environment");
        assert_eq!(aws.catalog(), "Sandbox");
        let credentials = aws.credentials().unwrap().clone();
        assert_eq!(credentials.access_key_id, "AKIDFROMENV");
        assert_eq!(
            credentials.session_token.unwrap().expose_secret(),
            "env-token"
        );
        assert_eq!(credentials.source.to_string(), "the AWS_* environment");
        Ok(())
    });
}

#[test]
fn each_aws_mistake_names_its_key_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{GOOD}
[aws]
catalog = \"aws\"
endpoint = \"http://partnercentral.example\"
invitation_url = \"https://partnercentral.example/invitations\"
requests_per_second = 0
timeout = \"2h\"
"
        ),
    )
    .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cosell-sync"));
    command
        .args(["--config", config.to_str().unwrap(), "check-config"])
        // No credentials anywhere: not in the environment, no ~/.aws/credentials.
        .env("HOME", dir.path())
        .env_remove("CREDENTIALS_DIRECTORY");
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") || name.starts_with("COSELL_") {
            command.env_remove(name);
        }
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for key in [
        "aws.catalog",
        "aws.endpoint",
        "aws.invitation_url",
        "aws.requests_per_second",
        "aws.timeout",
        "aws.access_key_id",
    ] {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
}

/// `[triage]` defaults to a dry run of 20 answers an hour; rules load in their order.
#[test]
fn triage_defaults_to_dry_run_and_rules_load_in_order() {
    Jail::expect_with(|jail| {
        jail.create_file("config.toml", GOOD)?;
        let config = load(jail).unwrap();
        assert_eq!(config.triage.mode, TriageMode::DryRun);
        assert_eq!(config.triage.max_answers_per_hour, 20);
        assert!(config.rules.is_empty());

        jail.create_file(
            "config.toml",
            &format!(
                r#"{GOOD}
[triage]
mode = "apply"
max_answers_per_hour = 5

[[rules]]
name = "keep-contoso"
customer = "(?i)contoso"
action = "none"

[[rules]]
name = "outside_territory-2"
not_countries = ["US", "ca"]
min_value = 0
max_value = 10000.5
currency = "USD"
action = "decline"
reason = "Customer is outside our region"
"#
            ),
        )?;
        let config = load(jail).unwrap();
        assert_eq!(config.triage.mode, TriageMode::Apply);
        assert_eq!(config.triage.max_answers_per_hour, 5);
        let names: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["keep-contoso", "outside_territory-2"]);
        assert_eq!(config.rules[1].action, RuleAction::Decline);
        jail.set_env("COSELL_TRIAGE__MODE", "dry-run");
        assert_eq!(load(jail).unwrap().triage.mode, TriageMode::DryRun);
        Ok(())
    });
}

/// Each bad rule key is its own error, named `rules[N].key` (spec §7: exit 78 naming the key).
#[test]
fn each_bad_rule_key_is_named_by_its_index() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            &format!(
                r#"{GOOD}
[triage]
max_answers_per_hour = 0

[[rules]]
name = "dup"
action = "accept"

[[rules]]
name = "dup"
action = "none"

[[rules]]
name = "no-reason"
action = "decline"

[[rules]]
name = "has space"
action = "accept"

[[rules]]
name = "bad-country"
countries = ["US", "UK"]
not_countries = ["XX"]
action = "accept"

[[rules]]
name = "bad-regex"
customer = "(unclosed"
action = "accept"

[[rules]]
name = "bound-without-currency"
min_value = 5000
action = "accept"

[[rules]]
name = "bad-source"
source = "oracle"
currency = "dollars"
action = "accept"

[[rules]]
name = "{long}"
min_value = 10
max_value = 5
currency = "EUR"
action = "accept"
"#,
                long = "x".repeat(65)
            ),
        )?;
        let errors = messages(load(jail).unwrap_err());
        for key in [
            "triage.max_answers_per_hour:",
            "rules[1].name:",
            "rules[2].reason is missing",
            "rules[3].name:",
            "rules[4].countries[1]:",
            "rules[4].not_countries[0]:",
            "rules[5].customer:",
            "rules[6].min_value:",
            "rules[7].source:",
            "rules[7].currency:",
            "rules[8].name:",
            "rules[8].max_value:",
        ] {
            assert_eq!(
                errors.iter().filter(|m| m.starts_with(key)).count(),
                1,
                "{key} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), 12, "{errors:#?}");
        Ok(())
    });
}

/// A mistyped action or mode is a load error naming the key, with the words that work.
#[test]
fn an_unknown_rule_action_or_mode_names_the_key() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "config.toml",
            &format!("{GOOD}\n[[rules]]\nname = \"a\"\naction = \"reject\"\n"),
        )?;
        let errors = messages(load(jail).unwrap_err());
        assert!(
            errors[0].starts_with("rules[0].action:") && errors[0].contains("decline"),
            "{errors:#?}"
        );
        jail.create_file(
            "config.toml",
            &format!("{GOOD}\n[triage]\nmode = \"live\"\n"),
        )?;
        let errors = messages(load(jail).unwrap_err());
        assert!(
            errors[0].starts_with("triage.mode:") && errors[0].contains("dry-run"),
            "{errors:#?}"
        );
        Ok(())
    });
}

/// The inbox trusts the actor header alone: with `actor_header` on a listen address that is
/// not loopback, a config without `proxy_secret_file` is refused naming the key (spec §7).
#[test]
fn an_inbox_exposed_beyond_loopback_needs_a_proxy_secret() {
    Jail::expect_with(|jail| {
        let actions = |listen: &str, secret: &str| {
            format!(
                "{GOOD}\n[actions]\nlisten = \"{listen}\"\npublic_url = \"https://sync.example.com/act\"\nactor_header = \"X-Forwarded-Email\"\n{secret}"
            )
        };
        jail.create_file("config.toml", &actions("0.0.0.0:8788", ""))?;
        let errors = messages(load(jail).unwrap_err());
        assert!(
            errors
                .iter()
                .any(|m| m.starts_with("actions.listen:") && m.contains("proxy_secret_file")),
            "{errors:#?}"
        );
        jail.create_file("proxy-secret", "0123456789abcdef0123\n")?;
        let secret = format!(
            "proxy_secret_file = \"{}\"\n",
            jail.directory().join("proxy-secret").display()
        );
        jail.create_file("config.toml", &actions("0.0.0.0:8788", &secret))?;
        load(jail).expect("behind a proxy secret");
        jail.create_file("config.toml", &actions("127.0.0.1:8788", ""))?;
        load(jail).expect("on loopback");
        jail.create_file("short", "x")?;
        let short = format!(
            "proxy_secret_file = \"{}\"\n",
            jail.directory().join("short").display()
        );
        jail.create_file("config.toml", &actions("127.0.0.1:8788", &short))?;
        let errors = messages(load(jail).unwrap_err());
        assert!(
            errors[0].starts_with("actions.proxy_secret_file:"),
            "{errors:#?}"
        );
        Ok(())
    });
}
