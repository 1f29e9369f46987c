//! `cosell-sync demo`: starts the simulator with sample referrals on 127.0.0.1, runs real
//! cycles of the daemon against it on a throw-away state directory, and prints what happened.
//! No configuration and no network beyond the loopback.

use chrono::Utc;
use figment::providers::Serialized;
use figment::Figment;

use crate::app::{self, App};
use crate::config::Config;
use crate::sim::{sample, Fault, Simulator};

pub async fn run(referrals: usize) -> anyhow::Result<()> {
    let sim = Simulator::start().await?;
    let now = Utc::now();
    let samples = sample::demo_set(referrals, now);
    let pending = samples
        .iter()
        .filter(|r| r["substatus"] == "Pending")
        .count();
    sim.put_referrals(samples);
    let dir = tempfile::tempdir()?;
    let config = demo_config(&sim, dir.path())?;
    println!("cosell-sync demo");
    println!(
        "  simulator of Partner Center and Entra ID on {}",
        sim.base_url()
    );
    println!(
        "  {} sample referrals ({pending} incoming Pending)",
        sim.referral_count()
    );
    println!("  state in {}", config.state.path.display());
    println!();

    let app = App::build(config.clone())?;

    println!("1. First cycle: the inbox (pages of 100) and the incremental query.");
    sim.script_faults([Fault::TooManyRequests {
        retry_after_secs: 1,
    }]);
    let first = app.sync_once().await;
    print_cycle(&first);
    println!("   (the simulator answered the first request with 429 Retry-After: 1; the client waited and went on)");

    println!("2. Second cycle, nothing changed on Microsoft's side:");
    let second = app.sync_once().await;
    print_cycle(&second);

    println!(
        "3. Someone accepts a referral and edits a deal value in Partner Center, then a cycle:"
    );
    let accepted = sample::referral_id(10);
    sim.edit_referral(&accepted, |r| {
        r["status"] = "Active".into();
        r["substatus"] = "Accepted".into();
    });
    sim.edit_referral(&sample::referral_id(11), |r| {
        r["details"]["dealValue"] = 250_000.0.into();
    });
    let third = app.sync_once().await;
    print_cycle(&third);
    println!();

    let report = app::status(&app.store, &config, Utc::now())?;
    print!("{}", app::render_status(&report, 8));
    println!();
    println!("HTTP requests the simulator served: {:?}", sim.counters());
    if [first, second, third].iter().any(|c| !c.ok()) {
        anyhow::bail!("a demo cycle failed");
    }
    Ok(())
}

fn print_cycle(c: &crate::sync::CycleReport) {
    match &c.error {
        None => println!(
            "   ok in {:.2}s: {} pages, {} new, {} changed, {} unchanged",
            c.elapsed.as_secs_f64(),
            c.pages,
            c.counts.new,
            c.counts.changed,
            c.counts.unchanged
        ),
        Some(e) => println!("   FAILED: {e}"),
    }
}

/// A configuration pointing every endpoint at the simulator.
pub fn demo_config(sim: &Simulator, state_dir: &std::path::Path) -> anyhow::Result<Config> {
    let creds = &sim.state.credentials;
    let figment = Figment::from(Serialized::defaults(serde_json::json!({
        "state": {"path": state_dir.join("state.db")},
        "microsoft": {
            "api_base": sim.base_url(),
            "authority": sim.base_url(),
            "tenant": creds.tenant,
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "refresh_token": creds.refresh_token,
            "requests_per_second": 50.0,
            "retry": {"min_delay": "100ms", "max_delay": "2s"}
        }
    })));
    let loaded = Config::from_figment(figment, &state_dir.join("demo.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(loaded.config)
}
