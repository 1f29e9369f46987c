//! `cosell-sync sim --listen ADDR`: the simulator as a process of its own, with the demo's
//! sample referrals and AWS invitations, so an operator can rehearse an install (package,
//! unit, first sign-in, reload) against it before pointing the service at the real clouds.
//! AWS Partner Central is another host than Microsoft's, so its simulator listens on a port
//! of its own: the next one after ADDR's when free, else any. It prints the config keys that
//! point at both and can write the secret files the config names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::aws::{self as sim_aws, AwsSimulator};
use super::{google::PARTNER_ID, sample, SimCredentials, Simulator};

/// What `cosell-sync sim` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub referrals: usize,
    /// Where to write `microsoft-client-secret`, `google-key.json` and
    /// `aws-secret-access-key` (0600), if anywhere.
    pub credentials_dir: Option<PathBuf>,
}

/// The file names the shipped config and the unit's `LoadCredential=` lines use.
pub(crate) const CLIENT_SECRET_FILE: &str = "microsoft-client-secret";
pub(crate) const GOOGLE_KEY_FILE: &str = "google-key.json";
pub(crate) const AWS_SECRET_FILE: &str = "aws-secret-access-key";

/// The two simulators of a `cosell-sync sim` process.
pub(crate) struct Simulators {
    pub(crate) clouds: Simulator,
    pub(crate) aws: AwsSimulator,
}

/// Starts the simulators, writes the secret files, and returns them with the text to print.
pub(crate) async fn start(options: &Options) -> anyhow::Result<(Simulators, String)> {
    let sim = Simulator::start_on(options.listen, SimCredentials::default())
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.listen))?;
    let now = chrono::Utc::now();
    sim.put_referrals(sample::demo_set(options.referrals, now));
    let aws = start_aws(sim.addr).await?;
    aws.put_invitations(sim_aws::sample_invitations(now));
    if let Some(dir) = &options.credentials_dir {
        write_secret(
            dir,
            CLIENT_SECRET_FILE,
            &sim.state.credentials.client_secret,
        )?;
        write_secret(dir, GOOGLE_KEY_FILE, &sim.google_key_json())?;
        write_secret(dir, AWS_SECRET_FILE, sim_aws::SECRET_ACCESS_KEY)?;
    }
    let text = instructions(&sim, &aws, options);
    Ok((Simulators { clouds: sim, aws }, text))
}

/// The AWS simulator on the port after `beside`'s (8601 beside 8600), or any port of the same
/// address when that one is taken.
async fn start_aws(beside: std::net::SocketAddr) -> anyhow::Result<AwsSimulator> {
    let next = beside.port().checked_add(1).unwrap_or(0);
    match AwsSimulator::start_on(SocketAddr::new(beside.ip(), next)).await {
        Ok(aws) => Ok(aws),
        Err(_) => AwsSimulator::start_on(SocketAddr::new(beside.ip(), 0))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} for AWS: {e}", beside.ip())),
    }
}

/// Runs until `stop` is cancelled (SIGTERM or SIGINT in the binary).
pub(crate) async fn serve(options: &Options, stop: CancellationToken) -> anyhow::Result<String> {
    let (sims, text) = start(options).await?;
    print!("{text}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    stop.cancelled().await;
    Ok(format!(
        "simulator stopped; requests served: {:?}; AWS: {} requests\n",
        sims.clouds.counters(),
        sims.aws.requests().len()
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
fn instructions(sim: &Simulator, aws: &AwsSimulator, options: &Options) -> String {
    let base = sim.base_url();
    let creds = &sim.state.credentials;
    let secrets = match &options.credentials_dir {
        Some(dir) => format!(
            "# {CLIENT_SECRET_FILE}, {GOOGLE_KEY_FILE} and {AWS_SECRET_FILE} written to {}\n",
            dir.display()
        ),
        None => "# add --credentials-dir DIR to write the three secret files\n".to_string(),
    };
    format!(
        "# cosell-sync simulator of Entra ID, Partner Center and Google Cloud CRM Partners\n\
         # on {base}, {n} sample referrals; of AWS Partner Central\n\
         # on {aws_endpoint}, {invitations} sample invitations.\n\
         # Stop it with Ctrl-C (SIGINT) or SIGTERM.\n\
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
         [aws]\n\
         endpoint = \"{aws_endpoint}\"\n\
         access_key_id = \"{aws_key}\"\n\
         secret_access_key_file = \"{AWS_SECRET_FILE}\"\n\
         \n\
         [google]\n\
         api_base = \"{base}\"\n\
         partner_id = \"{PARTNER_ID}\"\n\
         credentials_file = \"{GOOGLE_KEY_FILE}\"\n",
        n = sim.referral_count(),
        aws_endpoint = aws.endpoint(),
        invitations = aws.invitation_count(),
        aws_key = sim_aws::ACCESS_KEY_ID,
        tenant = creds.tenant,
        client_id = creds.client_id,
    )
}
