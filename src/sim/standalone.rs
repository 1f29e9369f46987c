//! `cosell-sync sim --listen ADDR`: the simulator as a process of its own, with the demo's
//! sample referrals, so an operator can rehearse an install (package, unit, first sign-in,
//! reload) against it before pointing the service at the real clouds. It prints the config
//! keys that point at it and can write the secret files the config names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::{google::PARTNER_ID, sample, SimCredentials, Simulator};

/// What `cosell-sync sim` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub referrals: usize,
    /// Where to write `microsoft-client-secret` and `google-key.json` (0600), if anywhere.
    pub credentials_dir: Option<PathBuf>,
}

/// The file names the shipped config and the unit's `LoadCredential=` lines use.
pub(crate) const CLIENT_SECRET_FILE: &str = "microsoft-client-secret";
pub(crate) const GOOGLE_KEY_FILE: &str = "google-key.json";

/// Starts the simulator, writes the secret files, and returns it with the text to print.
pub(crate) async fn start(options: &Options) -> anyhow::Result<(Simulator, String)> {
    let sim = Simulator::start_on(options.listen, SimCredentials::default())
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.listen))?;
    sim.put_referrals(sample::demo_set(options.referrals, chrono::Utc::now()));
    if let Some(dir) = &options.credentials_dir {
        write_secret(
            dir,
            CLIENT_SECRET_FILE,
            &sim.state.credentials.client_secret,
        )?;
        write_secret(dir, GOOGLE_KEY_FILE, &sim.google_key_json())?;
    }
    let text = instructions(&sim, options);
    Ok((sim, text))
}

/// Runs until `stop` is cancelled (SIGTERM or SIGINT in the binary).
pub(crate) async fn serve(options: &Options, stop: CancellationToken) -> anyhow::Result<String> {
    let (sim, text) = start(options).await?;
    print!("{text}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    stop.cancelled().await;
    Ok(format!(
        "simulator stopped; requests served: {:?}\n",
        sim.counters()
    ))
}

fn write_secret(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    Ok(())
}

/// The config keys that point a service at this simulator, and where the secrets went.
fn instructions(sim: &Simulator, options: &Options) -> String {
    let base = sim.base_url();
    let creds = &sim.state.credentials;
    let secrets = match &options.credentials_dir {
        Some(dir) => format!(
            "# {CLIENT_SECRET_FILE} and {GOOGLE_KEY_FILE} written to {}\n",
            dir.display()
        ),
        None => "# add --credentials-dir DIR to write the two secret files\n".to_string(),
    };
    format!(
        "# cosell-sync simulator of Entra ID, Partner Center and Google Cloud CRM Partners\n\
         # on {base}, {n} sample referrals. Stop it with Ctrl-C (SIGINT) or SIGTERM.\n\
         # Put these keys in the config to rehearse an install against it; the first\n\
         # sign-in (`cosell-sync auth microsoft`) is accepted at once.\n\
         {secrets}\
         [microsoft]\n\
         api_base = \"{base}\"\n\
         authority = \"{base}\"\n\
         tenant = \"{tenant}\"\n\
         client_id = \"{client_id}\"\n\
         client_secret_file = \"{CLIENT_SECRET_FILE}\"\n\
         \n\
         [google]\n\
         api_base = \"{base}\"\n\
         partner_id = \"{PARTNER_ID}\"\n\
         credentials_file = \"{GOOGLE_KEY_FILE}\"\n",
        n = sim.referral_count(),
        tenant = creds.tenant,
        client_id = creds.client_id,
    )
}
