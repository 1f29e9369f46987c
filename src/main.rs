//! The `cosell-sync` binary: parses the command line, calls one [`app::commands`] function per
//! command, prints what it returns and exits with its code.

use cosell_sync::app::commands::{self as cmd, Outcome};
use cosell_sync::cli::{Cli, Command};
use cosell_sync::config::config_path;
use cosell_sync::{exit, telemetry};

fn main() {
    cap_malloc_arenas();
    let cli = Cli::parse_checked();
    if let Some(code) = cosell_sync::generate::run(&cli.command) {
        std::process::exit(code);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // The store has its own thread per connection; what still blocks (name lookups) needs
        // few threads, and each one idle for 10 s keeps its stack and malloc cache (the first
        // sync grew to 33 when every store call was a blocking task).
        .max_blocking_threads(16)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cosell-sync: cannot start the async runtime: {e}");
            std::process::exit(exit::CYCLE_FAILED);
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(printed) => {
            print!("{}", printed.stdout);
            printed.code
        }
        Err(e) => {
            // In the log's format, so a json log stays all JSON (plain before the config loads).
            telemetry::print_error(&e.to_string());
            e.exit_code()
        }
    };
    // Exit without tearing the runtime down. A teardown drops the connection tasks first,
    // and a write still running past `shutdown_grace` would record that as its own failure:
    // a lead create was quarantined for "dispatch task is gone". Left alone, it stays in
    // flight as after a SIGKILL, and the next start quarantines it saying the process
    // stopped. Nothing needs the teardown: the store commits each step as it goes, and no
    // detached blocking work (a hung DNS lookup, say) is waited for.
    std::mem::forget(runtime);
    std::process::exit(code);
}

/// glibc's malloc gives every thread that allocates an arena of its own (up to eight per
/// core) and keeps what was freed there for that thread: the runtime's workers and the
/// blocking threads of the store each held megabytes, and the first sync's RSS grew with the
/// inbox (53 MiB at 10k referrals, for a 6 MB heap). Two arenas keep RSS near the heap at no
/// measurable CPU cost (docs/benchmarks.md, "Allocator"). Called before any thread starts;
/// `MALLOC_ARENA_MAX` in the environment still wins.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; no thread has been started yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

async fn dispatch(cli: Cli) -> Outcome {
    let file = config_path(cli.config.as_deref());
    let dry_run = cli.is_dry_run();
    let answer_dry_run = cli.is_answer_dry_run();
    if let Command::Demo { referrals } = cli.command {
        // The demo installs its own subscriber, logging to a file beside its state.
        return cmd::demo(referrals).await;
    }
    if let Command::Sim {
        listen,
        referrals,
        credentials_dir,
    } = cli.command
    {
        return cmd::sim(cosell_sync::sim::standalone::Options {
            listen,
            referrals,
            credentials_dir,
        })
        .await;
    }
    let config = cmd::load_config_for(&cli.command, &file, dry_run)?;
    telemetry::init(config.log.format, &config.log.level);
    cmd::dispatch(cli.command, config, &file, dry_run, answer_dry_run).await
}
