//! The man page and shell completions, generated from the clap definitions in [`crate::cli`]
//! so they never disagree with `--help` (`cosell-sync man`, `cosell-sync completions bash`).

use std::io::Write;

use clap::CommandFactory;

use crate::cli::{Cli, Command};

/// Shells `cosell-sync completions` writes a script for.
pub(crate) use clap_complete::Shell;

/// `man` and `completions` print to stdout and need no configuration: `Some(exit code)` for
/// them, `None` for every other command.
pub fn run(command: &Command) -> Option<i32> {
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Man => Some(match man_page(&mut stdout) {
            Ok(()) => crate::exit::OK,
            Err(e) => {
                eprintln!("cosell-sync: man: {e}");
                crate::exit::CYCLE_FAILED
            }
        }),
        Command::Completions { shell } => {
            completions(*shell, &mut stdout);
            Some(crate::exit::OK)
        }
        _ => None,
    }
}

const BIN: &str = "cosell-sync";

/// Writes the completion script for `shell` to `out`.
pub(crate) fn completions(shell: Shell, out: &mut dyn Write) {
    let mut command = Cli::command();
    if shell != Shell::Bash {
        clap_complete::generate(shell, &mut command, BIN, out);
        return;
    }
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, BIN, &mut script);
    let script = fix_bash_state_names(&String::from_utf8_lossy(&script));
    let _ = out.write_all(script.as_bytes());
}

/// clap_complete's bash script (4.6, clap-rs/clap#6421, #6529; unfixed upstream) names its
/// states two ways when the binary's name has a hyphen: the dispatch loop sets
/// `cosell__sync__subcmd__outbox`, the case arms wait for `cosell__subcmd__sync__subcmd__outbox`,
/// so nothing completes after the first word. The arms are renamed to the loop's spelling.
fn fix_bash_state_names(script: &str) -> String {
    let loop_name = BIN.replace('-', "__");
    let arm_name = BIN.replace('-', "__subcmd__");
    script.replace(&format!("{arm_name}__"), &format!("{loop_name}__"))
}

/// Writes the man page, cosell-sync(1), in roff to `out`: the clap text of every command,
/// then the sections an administrator looks for (files, environment, exit status).
pub(crate) fn man_page(out: &mut dyn Write) -> std::io::Result<()> {
    let command = Cli::command()
        .long_about(
            "Keeps Microsoft Partner Center co-sell referrals and Google Cloud CRM Partners leads \
             and opportunities in step, and warns before a referral's 14-day response window \
             closes. Run as a systemd service (`run`); the other commands inspect and repair \
             its state.",
        )
        .flatten_help(true);
    let man = clap_mangen::Man::new(command).date(env!("CARGO_PKG_VERSION"));
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    out.write_all(b".SH COMMANDS\n")?;
    for sub in Cli::command().get_subcommands() {
        render_command(sub, "cosell-sync", out)?;
    }
    out.write_all(EXTRA.as_bytes())?;
    man.render_version_section(out)?;
    Ok(())
}

/// One command (and its subcommands) as a `.SS` block: usage, about, each argument.
fn render_command(cmd: &clap::Command, parent: &str, out: &mut dyn Write) -> std::io::Result<()> {
    let path = format!("{parent} {}", cmd.get_name());
    if cmd.has_subcommands() {
        for sub in cmd.get_subcommands() {
            render_command(sub, &path, out)?;
        }
        return Ok(());
    }
    let mut usage = path.clone();
    for arg in cmd.get_arguments().filter(|a| a.get_id() != "help") {
        let name = arg
            .get_value_names()
            .and_then(|v| v.first())
            .map_or_else(|| arg.get_id().as_str().to_uppercase(), |v| v.to_string());
        let word = match arg.get_long() {
            Some(long) if arg.get_action().takes_values() => {
                format!("[--{long} {name}]")
            }
            Some(long) => format!("[--{long}]"),
            None => name,
        };
        usage.push(' ');
        usage.push_str(&word);
    }
    writeln!(out, ".SS \"{}\"", roff(&usage))?;
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        writeln!(out, "{}", roff(&about.to_string()))?;
    }
    for arg in cmd.get_arguments().filter(|a| a.get_id() != "help") {
        let label = match arg.get_long() {
            Some(long) => format!("\\fB\\-\\-{}\\fR", roff(long)),
            None => format!("\\fI{}\\fR", roff(&arg.get_id().as_str().to_uppercase())),
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if default.is_empty() {
            String::new()
        } else {
            format!(" [default: {}]", default.join(", "))
        };
        writeln!(out, ".TP\n{label}\n{}{}", roff(&help), roff(&default))?;
    }
    Ok(())
}

/// Text made safe for roff: backslashes escaped, hyphens literal, no line starting a request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sections clap does not know about, in roff.
const EXTRA: &str = r#".SH FILES
.TP
\fI/etc/cosell\-sync/config.toml\fR
The configuration (\fB\-\-config\fR, \fBCOSELL_CONFIG\fR). It holds no secrets and must be
readable by the service's DynamicUser (0644 in a 0755 directory); every key is listed with
its default in \fI/usr/share/doc/cosell\-sync/config.example.toml\fR.
.TP
\fI/etc/cosell\-sync/credentials/\fR
Secrets (root only, 0600), handed to the service by systemd's LoadCredential= and found
through \fB$CREDENTIALS_DIRECTORY\fR by the config's relative \fI*_file\fR paths.
.TP
\fI/var/lib/cosell\-sync/state.db\fR
The SQLite database ([state] path); \fImicrosoft\-refresh\-token\fR beside it holds the
rotated Microsoft refresh token (0600). Install a backup with \fBcosell\-sync restore\fR.
.TP
\fI/var/lib/cosell\-sync/actions.key\fR
With [actions] and no key_file: the generated HMAC key (0600) that signs the accept and
decline links in alerts. A secret: losing it only invalidates links already sent.
.SH ENVIRONMENT
.TP
\fBCOSELL_CONFIG\fR
The configuration file when \fB\-\-config\fR is not given.
.TP
\fBCOSELL_\fISECTION\fB__\fIKEY\fR
Overrides a configuration key, e.g. \fBCOSELL_MICROSOFT__TENANT\fR.
.TP
\fBCREDENTIALS_DIRECTORY\fR
Where relative secret file paths are looked up (set by systemd).
.TP
\fBRUST_LOG\fR
A log filter that wins over [log] level.
.TP
\fBNO_COLOR\fR
Turns off colour in text logs (colour is only ever used on a terminal).
.SH EXIT STATUS
.TP
\fB0\fR
The command did what it was asked.
.TP
\fB1\fR
The cycle or command failed (remote API, authentication refused, database unusable).
.TP
\fB2\fR
Command-line usage error.
.TP
\fB75\fR
\fBrun\fR only: the database file was deleted or replaced while the daemon had it open
(EX_TEMPFAIL). It stopped instead of writing into a file that is gone; systemd restarts it on
purpose, and the restart opens the file now at the path and re-links every lead.
.TP
\fB78\fR
Configuration error (EX_CONFIG); the unit's RestartPreventExitStatus=78 stops restarts.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBsystemd.exec\fR(5);
\fI/usr/share/doc/cosell\-sync/operations.md\fR
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_argument_of_every_command_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the command itself)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "cosell-sync", &mut missing);
        assert!(missing.is_empty(), "no --help text: {missing:#?}");
    }

    #[test]
    fn the_man_page_documents_every_subcommand_and_the_exit_codes() {
        let mut out = Vec::new();
        man_page(&mut out).unwrap();
        let roff = String::from_utf8(out).unwrap();
        assert!(
            roff.starts_with(".ie") || roff.contains(".TH cosell-sync 1"),
            "{roff}"
        );
        for sub in Cli::command().get_subcommands() {
            let name = format!(".SS \"cosell\\-sync {}", sub.get_name().replace('-', "\\-"));
            assert!(roff.contains(&name), "{name} missing from the man page");
        }
        assert!(
            roff.contains("cosell\\-sync outbox retry"),
            "nested commands"
        );
        assert!(
            !roff.contains("cosell\\-sync\\-run(1)"),
            "no pages that do not exist"
        );
        assert!(roff.contains(".SH EXIT STATUS") && roff.contains("\\fB78\\fR"));
        // Issue 28: exit 75 and the action-link key were missing.
        assert!(roff.contains("\\fB75\\fR"), "exit code 75");
        assert!(roff.contains("actions.key"), "the action-link key file");
    }

    /// What bash offers for `words` (the last one is being completed), with the script sourced
    /// exactly as bash-completion would.
    fn bash_complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
        let array: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let program = format!(
            "source '{}'; f=$(complete -p cosell-sync | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p'); \
             COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
             \"$f\" cosell-sync '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            array.join(" "),
            words.len() - 1,
            words.join(" "),
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = std::process::Command::new("bash")
            .args(["--norc", "-c", &program])
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn bash_completes_beyond_the_first_word() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cosell-sync.bash");
        let mut out = Vec::new();
        completions(Shell::Bash, &mut out);
        std::fs::write(&path, out).unwrap();
        for (words, expected) in [
            (&["cosell-sync", "out"][..], &["outbox"][..]),
            (&["cosell-sync", "outbox", ""], &["list", "retry", "drop"]),
            (
                &["cosell-sync", "outbox", "list", "--"],
                &["--state", "--limit", "--json"],
            ),
            (
                &["cosell-sync", "status", "--"],
                &["--json", "--limit", "--referral"],
            ),
            (&["cosell-sync", "alerts", ""], &["list", "test"]),
            (
                &["cosell-sync", "sim", "--"],
                &["--listen", "--credentials-dir"],
            ),
            (
                &["cosell-sync", "completions", ""],
                &["bash", "zsh", "fish"],
            ),
        ] {
            let offered = bash_complete(&path, words);
            for word in expected {
                assert!(
                    offered.iter().any(|o| o == word),
                    "{words:?}: {word} not offered, got {offered:?}"
                );
            }
        }
    }

    #[test]
    fn completions_name_the_subcommands() {
        let mut out = Vec::new();
        completions(Shell::Bash, &mut out);
        let script = String::from_utf8(out).unwrap();
        for word in ["check-config", "outbox", "--config", "--dry-run"] {
            assert!(
                script.contains(word),
                "{word} missing from the bash completion"
            );
        }
    }
}
