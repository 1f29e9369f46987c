//! What the benchmarks share: the daemon's config against the in-process simulator.

use cosell_sync::sim::{google::PARTNER_ID, Simulator};

/// A config for the daemon against `sim`: state at `state`, the Google key at `key` (written
/// here), both APIs capped at `rps`, then `tables` (whole TOML tables each bench adds:
/// `[schedule]`, `[sync]`, `[metrics]`, ...).
pub fn daemon_config(
    sim: &Simulator,
    state: &std::path::Path,
    key: &std::path::Path,
    rps: u32,
    tables: &str,
) -> String {
    std::fs::write(key, sim.google_key_json()).unwrap();
    let c = &sim.state.credentials;
    format!(
        r#"
[state]
path = "{state}"
[log]
level = "warn"
[microsoft]
api_base = "{base}"
authority = "{base}"
tenant = "{tenant}"
client_id = "{client}"
client_secret = "{secret}"
refresh_token = "{refresh}"
requests_per_second = {rps}
[google]
api_base = "{base}"
partner_id = "{PARTNER_ID}"
credentials_file = "{key}"
requests_per_second = {rps}
[google.lead]
submitter_email = "bench@partner.example"
product_family = "GOOGLE_CLOUD_PLATFORM"
{tables}
"#,
        state = state.display(),
        base = sim.base_url(),
        tenant = c.tenant,
        client = c.client_id,
        secret = c.client_secret,
        refresh = c.refresh_token,
        key = key.display(),
    )
}
