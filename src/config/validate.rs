//! Validation: every key checked, all problems reported together, each naming its key.

use std::time::Duration;

use super::{Config, ConfigError, ConfigErrors, HumanDuration};

/// `config.example.toml`'s `microsoft.client_id`, refused as a value.
const PLACEHOLDER_CLIENT_ID: &str = "00000000-0000-0000-0000-000000000000";

impl Config {
    /// Per key, the longest duration that makes sense; longer is a typo (a grace period of a
    /// year, a timeout of a month) and is refused by key. A table, one row a key.
    fn duration_ceilings(&self) -> Vec<(String, Duration, Duration)> {
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(86_400);
        let ms = &self.microsoft;
        let r = &ms.retry;
        let mut out: Vec<(String, Duration, Duration)> = vec![
            (
                "daemon.shutdown_grace".into(),
                self.daemon.shutdown_grace.0,
                HOUR,
            ),
            (
                "daemon.stuck_after".into(),
                self.daemon.stuck_after.0,
                7 * DAY,
            ),
            ("microsoft.timeout".into(), ms.timeout.0, HOUR),
            (
                "microsoft.connect_timeout".into(),
                ms.connect_timeout.0,
                HOUR,
            ),
            (
                "microsoft.incremental_overlap".into(),
                ms.incremental_overlap.0,
                7 * DAY,
            ),
            (
                "microsoft.initial_lookback".into(),
                ms.initial_lookback.0,
                3650 * DAY,
            ),
            ("microsoft.retry.min_delay".into(), r.min_delay.0, DAY),
            ("microsoft.retry.max_delay".into(), r.max_delay.0, DAY),
            ("microsoft.retry.max_total".into(), r.max_total.0, DAY),
            (
                "microsoft.retry.max_retry_after".into(),
                r.max_retry_after.0,
                DAY,
            ),
            ("google.timeout".into(), self.google.timeout.0, HOUR),
            (
                "google.connect_timeout".into(),
                self.google.connect_timeout.0,
                HOUR,
            ),
            (
                "google.retry.min_delay".into(),
                self.google.retry.min_delay.0,
                DAY,
            ),
            (
                "google.retry.max_delay".into(),
                self.google.retry.max_delay.0,
                DAY,
            ),
            (
                "google.retry.max_total".into(),
                self.google.retry.max_total.0,
                DAY,
            ),
            (
                "google.retry.max_retry_after".into(),
                self.google.retry.max_retry_after.0,
                DAY,
            ),
            ("sync.retry_min".into(), self.sync.retry_min.0, 7 * DAY),
            ("sync.retry_max".into(), self.sync.retry_max.0, 30 * DAY),
            (
                "alerts.response_window".into(),
                self.alerts.response_window.0,
                365 * DAY,
            ),
        ];
        if let Some(d) = self.google.lead.default_close_in {
            out.push(("google.lead.default_close_in".into(), d.0, 3650 * DAY));
        }
        for (i, t) in self.alerts.thresholds.iter().enumerate() {
            out.push((format!("alerts.thresholds[{i}]"), t.0, 365 * DAY));
        }
        for (i, w) in self.alerts.webhook.iter().enumerate() {
            out.push((format!("alerts.webhook[{i}].timeout"), w.timeout.0, HOUR));
        }
        for (i, c) in self.alerts.command.iter().enumerate() {
            out.push((format!("alerts.command[{i}].timeout"), c.timeout.0, HOUR));
        }
        if let Some(aws) = &self.aws {
            out.extend(aws.duration_ceilings());
        }
        out
    }

    /// Checks every key and reports all problems together, each naming its key, one helper
    /// per section (in this order, so the messages come in the order of the file).
    pub(super) fn validate_checked(&self, require_refresh_token: bool) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        self.check_state_and_urls(&mut errors);
        self.check_inboxes(&mut errors);
        if self.microsoft_enabled() {
            self.check_microsoft(&mut errors, require_refresh_token);
        }
        self.check_google(&mut errors);
        self.check_sync_refresh(&mut errors);
        self.check_alerts(&mut errors);
        self.check_listeners(&mut errors);
        self.check_bounds(&mut errors);
        if let Some(aws) = &self.aws {
            aws.validate(self.actions.as_ref(), &mut errors);
        }
        self.triage.validate(&mut errors);
        super::triage::validate_rules(&self.rules, &mut errors);
        if self.aws.is_some() {
            super::aws::validate_rule_reasons(&self.rules, &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn check_state_and_urls(&self, errors: &mut Vec<ConfigError>) {
        if self.state.path.as_os_str().is_empty() {
            errors.push(ConfigError::missing("state.path"));
        }
        if let Err(e) = parse_cron(&self.schedule.sync) {
            errors.push(ConfigError::new("schedule.sync", e));
        }
        let ms = &self.microsoft;
        for (key, value) in [
            ("microsoft.api_base", &ms.api_base),
            ("microsoft.authority", &ms.authority),
            ("google.api_base", &self.google.api_base),
        ] {
            if let Err(e) = check_base_url(value) {
                errors.push(ConfigError::new(key, e));
            }
        }
    }

    /// Which inboxes are watched (spec §8): `[microsoft]`, `[aws]` or both; Google leads and
    /// Partner Center events come from Microsoft referrals, so `[google]` (a partner id) and
    /// `[webhook]` need `[microsoft]`.
    fn check_inboxes(&self, errors: &mut Vec<ConfigError>) {
        if self.microsoft_enabled() {
            return;
        }
        if self.aws.is_none() {
            errors.push(ConfigError::new(
                "microsoft",
                "is missing, and so is [aws]: configure at least one inbox ([microsoft] for Partner Center referrals, [aws] for AWS Partner Central invitations; see config.example.toml)",
            ));
        }
        // "[google]" is the Google side, as everywhere in this file: on with a partner id. The
        // shipped config's [google] tables without one are inert and may stay.
        if self.google_enabled() {
            errors.push(ConfigError::new(
                "google.partner_id",
                "is set, but [microsoft] is not: Google leads are made from Partner Center referrals only (add [microsoft], or leave partner_id unset for an AWS-only set-up)",
            ));
        }
        if self.webhook.is_some() {
            errors.push(ConfigError::new(
                "webhook",
                "needs [microsoft]: it receives Partner Center events (add [microsoft], or remove [webhook] for an AWS-only set-up)",
            ));
        }
    }

    fn check_microsoft(&self, errors: &mut Vec<ConfigError>, require_refresh_token: bool) {
        let ms = &self.microsoft;
        for (key, value) in [
            ("microsoft.tenant", &ms.tenant),
            ("microsoft.client_id", &ms.client_id),
        ] {
            if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                errors.push(ConfigError::missing(key));
            }
        }
        // The example's all-zeros id passed every check and failed only at Entra, as
        // "unauthorized_client", long after the install looked done.
        if ms.client_id.as_deref().map(str::trim) == Some(PLACEHOLDER_CLIENT_ID) {
            errors.push(ConfigError::new(
                "microsoft.client_id",
                "is the example's placeholder (all zeros): set your Entra app registration's Application (client) ID",
            ));
        }
        if require_refresh_token && ms.refresh_token.is_none() && !self.token_file().exists() {
            errors.push(ConfigError::new(
                "microsoft.refresh_token",
                format!(
                    "is missing and there is no stored token at {} (run `cosell-sync auth microsoft`, or set microsoft.refresh_token or microsoft.refresh_token_file)",
                    self.token_file().display()
                ),
            ));
        }
        for (key, rps) in [
            ("microsoft.requests_per_second", ms.requests_per_second),
            (
                "google.requests_per_second",
                self.google.requests_per_second,
            ),
        ] {
            if !(rps.is_finite() && rps > 0.0) {
                errors.push(ConfigError::new(
                    key,
                    format!("must be a positive number, got {rps}"),
                ));
            }
        }
        if !(1..=100).contains(&ms.page_size) {
            errors.push(ConfigError::new(
                "microsoft.page_size",
                format!(
                    "must be between 1 and 100 (the API's maximum), got {}",
                    ms.page_size
                ),
            ));
        }
        if ms.timeout.0.is_zero() {
            errors.push(ConfigError::new(
                "microsoft.timeout",
                "must be more than 0s",
            ));
        }
    }

    fn check_google(&self, errors: &mut Vec<ConfigError>) {
        let lead = &self.google.lead;
        for (key, value) in [
            ("google.lead.engagement_model", &lead.engagement_model),
            (
                "google.lead.deal_transaction_type",
                &lead.deal_transaction_type,
            ),
            ("google.lead.support_level", &lead.support_level),
            ("google.lead.delivery_model", &lead.delivery_model),
            ("google.lead.contract_vehicle", &lead.contract_vehicle),
        ] {
            if value.trim().is_empty() || value.ends_with("_UNSPECIFIED") {
                errors.push(ConfigError::new(
                    key,
                    format!("{value:?} is not a value the API accepts on create"),
                ));
            }
        }
        if self.google_enabled() {
            if self.google.credentials_file.is_none() {
                errors.push(ConfigError::missing("google.credentials_file"));
            }
            if lead
                .submitter_email
                .as_deref()
                .is_none_or(|e| !e.contains('@'))
            {
                errors.push(ConfigError::new(
                    "google.lead.submitter_email",
                    "is missing (every lead create must carry the submitting partner user's email)",
                ));
            }
        }
        if self.google_enabled()
            && lead
                .product_family
                .as_deref()
                .is_none_or(|f| f.trim().is_empty())
            && lead.product_families.is_empty()
        {
            errors.push(ConfigError::new(
                "google.lead.product_family",
                "is missing, and google.lead.product_families is empty: no referral could ever become a Google lead (set product_family, e.g. \"GOOGLE_CLOUD_PLATFORM\", or map Microsoft products in product_families)",
            ));
        }
    }

    /// `[sync]`, `[refresh]`, `[alerts]` and `[metrics]` checks: a flat list of independent
    /// rules, each naming its key; long only because there are many keys.
    /// Durations, concurrency, read budgets and retries of `[sync]`, `[refresh]` and `[google]`.
    fn check_sync_refresh(&self, errors: &mut Vec<ConfigError>) {
        for (key, value, max) in self.duration_ceilings() {
            if value > max {
                errors.push(ConfigError::new(
                    key,
                    format!(
                        "{} is too long (at most {})",
                        HumanDuration(value),
                        HumanDuration(max)
                    ),
                ));
            }
        }
        if self.sync.concurrency == 0 {
            errors.push(ConfigError::new("sync.concurrency", "must be at least 1"));
        }
        if self.refresh.concurrency == 0 {
            errors.push(ConfigError::new(
                "refresh.concurrency",
                "must be at least 1",
            ));
        }
        if self.refresh.reads_per_hour == 0 && self.google_enabled() {
            errors.push(ConfigError::new(
                "refresh.reads_per_hour",
                "must be at least 1 with [google]: with 0 no Google record is ever re-read, so a won or lost opportunity never reaches Partner Center (the default is 3600)",
            ));
        }
        if self.refresh.max_interval.0 < self.refresh.min_interval.0 {
            errors.push(ConfigError::new(
                "refresh.max_interval",
                "must not be shorter than refresh.min_interval",
            ));
        }
        if self.google.timeout.0.is_zero() {
            errors.push(ConfigError::new("google.timeout", "must be more than 0s"));
        }
        if self.sync.max_attempts == 0 {
            errors.push(ConfigError::new("sync.max_attempts", "must be at least 1"));
        }
    }

    /// `[alerts]`: the window, sinks, thresholds, routes and time zone.
    fn check_alerts(&self, errors: &mut Vec<ConfigError>) {
        if self.alerts.response_window.0.is_zero() {
            errors.push(ConfigError::new(
                "alerts.response_window",
                "must be more than 0s",
            ));
        }
        for (i, hook) in self.alerts.webhook.iter().enumerate() {
            if check_base_url(&hook.url).is_err() {
                // Not quoted: the URL is a secret.
                errors.push(ConfigError::new(
                    format!("alerts.webhook[{i}].url"),
                    "must be an http(s) URL",
                ));
            }
        }
        for (i, command) in self.alerts.command.iter().enumerate() {
            if command.argv.is_empty() || command.argv[0].trim().is_empty() {
                errors.push(ConfigError::new(
                    format!("alerts.command[{i}].argv"),
                    "must name a program",
                ));
            }
        }
        if self.alerts.failed_cycles == 0 {
            errors.push(ConfigError::new(
                "alerts.failed_cycles",
                "must be at least 1",
            ));
        }
        if self.alerts.thresholds.iter().any(|t| t.0.is_zero()) {
            errors.push(ConfigError::new(
                "alerts.thresholds",
                "a threshold must be more than 0s",
            ));
        }
        self.alerts.check_routes(errors);
        if crate::timefmt::parse_zone(&self.alerts.timezone).is_none() {
            let zone = &self.alerts.timezone;
            let hint = super::suggest::did_you_mean(zone, crate::timefmt::zone_names())
                .map(|name| format!("; did you mean \"{name}\"?"))
                .unwrap_or_default();
            errors.push(ConfigError::new(
                "alerts.timezone",
                format!(
                    "{zone:?} is not a time zone: use a name like \"Europe/Berlin\", \"UTC\" or an offset like \"+01:00\"{hint}"
                ),
            ));
        }
    }

    /// The listeners of `run`: `[metrics]`, `[webhook]`, `[actions]`, and their clashes.
    fn check_listeners(&self, errors: &mut Vec<ConfigError>) {
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                errors.push(ConfigError::new(
                    "metrics.listen",
                    format!("{listen:?} is not host:port (e.g. \"127.0.0.1:9464\")"),
                ));
            }
        }
        if let Some(webhook) = &self.webhook {
            webhook.validate(errors);
        }
        self.validate_listen_clashes(errors);
        if let Some(actions) = &self.actions {
            actions.validate(errors);
            let metrics = self.metrics.listen.as_deref();
            actions.validate_listen(self.webhook.as_ref(), metrics, errors);
        }
    }
}

impl Config {
    /// Two listeners of `run` on one address (or overlapping through 0.0.0.0 / ::): the second
    /// bind would fail at start. (`[actions]` may share `[webhook]`'s exact address by
    /// design: the server layer serves both routers on one socket.)
    fn validate_listen_clashes(&self, errors: &mut Vec<ConfigError>) {
        let (Some(metrics), Some(webhook)) = (&self.metrics.listen, &self.webhook) else {
            return;
        };
        if listen_addresses_overlap(metrics, &webhook.listen) {
            errors.push(ConfigError::new(
                "metrics.listen",
                format!(
                    "{metrics:?} overlaps webhook.listen {:?}: two listeners cannot bind one port; give /metrics its own (e.g. \"127.0.0.1:9464\")",
                    webhook.listen
                ),
            ));
        }
    }
}

/// Whether two `host:port` listen addresses would fight over one socket: the same port, and
/// the same IP or either one a wildcard (0.0.0.0 or ::). Unparsable ones never overlap (they
/// have their own errors).
pub fn listen_addresses_overlap(a: &str, b: &str) -> bool {
    let (Ok(a), Ok(b)) = (
        a.parse::<std::net::SocketAddr>(),
        b.parse::<std::net::SocketAddr>(),
    ) else {
        return false;
    };
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Parses a 6-field cron (seconds first) exactly as the scheduler will.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!("invalid cron expression {expr:?}: {e} (6 fields, seconds first, e.g. \"0 */5 * * * *\")")
        })
}

fn check_base_url(value: &str) -> Result<(), String> {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        Ok(url) => Err(format!(
            "{value:?} must be an http(s) URL, not {}",
            url.scheme()
        )),
        Err(e) => Err(format!("{value:?} is not a URL: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::listen_addresses_overlap as overlap;

    #[test]
    fn listen_addresses_overlap_on_one_port_through_the_same_ip_or_a_wildcard() {
        assert!(overlap("127.0.0.1:8787", "127.0.0.1:8787"));
        assert!(overlap("0.0.0.0:8787", "127.0.0.1:8787"));
        assert!(overlap("127.0.0.1:8787", "[::]:8787"));
        assert!(!overlap("127.0.0.1:8787", "127.0.0.1:9464"));
        assert!(!overlap("127.0.0.1:8787", "127.0.0.2:8787"));
        assert!(!overlap("127.0.0.1:0", "127.0.0.1:0"));
        assert!(!overlap("nowhere:8787", "nowhere:8787"));
    }
}
