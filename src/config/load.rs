//! Loading: compiled-in defaults, then the TOML file, then `COSELL_SECTION__KEY` env variables
//! (figment); the file check says exactly why a file cannot be read.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;

use super::{Config, ConfigError, ConfigErrors, DEFAULT_CONFIG_PATH, ENV_PREFIX};

/// Where the configuration came from, for messages and `check-config`.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
}

/// What a command needs from the configuration beyond its keys.
#[derive(Debug, Clone, Copy)]
struct Needs {
    /// Read the secret files (`*_file`) into the config.
    secrets: bool,
    /// A refresh token must be configured or stored.
    refresh_token: bool,
}

impl Needs {
    const ALL: Needs = Needs {
        secrets: true,
        refresh_token: true,
    };
    const READ_ONLY: Needs = Needs {
        secrets: false,
        refresh_token: false,
    };
}

/// The path the command line, then `COSELL_CONFIG`, then the default name.
pub fn config_path(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os("COSELL_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

impl Config {
    /// Layers defaults, the file and the environment, loads secret files, and validates.
    pub fn load(file: &Path) -> Result<Loaded, ConfigErrors> {
        Self::load_checked(file, true)
    }

    /// For `auth microsoft`, which is how the first refresh token is obtained: the same as
    /// [`Config::load`] without requiring one.
    pub(crate) fn load_for_auth(file: &Path) -> Result<Loaded, ConfigErrors> {
        Self::load_checked(file, false)
    }

    /// For the commands that only read the database (`status`, `alerts list`, `outbox list`,
    /// `audit`, `reload`): the same validation, but no secret is read and no refresh token is
    /// needed, so they work from any shell that can read the config and the database.
    pub(crate) fn load_read_only(file: &Path) -> Result<Loaded, ConfigErrors> {
        Self::load_with(file, Needs::READ_ONLY)
    }

    fn load_checked(file: &Path, require_refresh_token: bool) -> Result<Loaded, ConfigErrors> {
        let needs = Needs {
            secrets: true,
            refresh_token: require_refresh_token,
        };
        Self::load_with(file, needs)
    }

    fn load_with(file: &Path, needs: Needs) -> Result<Loaded, ConfigErrors> {
        check_readable(file)?;
        let figment = Figment::new()
            .merge(Toml::file_exact(file))
            .merge(config_env());
        Self::from_figment_checked(figment, file, needs)
    }

    /// The part of [`Config::load`] after the file check; tests feed it a figment directly.
    pub(crate) fn from_figment(figment: Figment, file: &Path) -> Result<Loaded, ConfigErrors> {
        Self::from_figment_checked(figment, file, Needs::ALL)
    }

    fn from_figment_checked(
        figment: Figment,
        file: &Path,
        needs: Needs,
    ) -> Result<Loaded, ConfigErrors> {
        let mut config: Config = figment.extract().map_err(figment_errors)?;
        let base_dir = file.parent().unwrap_or(Path::new("."));
        if needs.secrets {
            config.resolve_secrets(base_dir)?;
        } else if let Some(path) = &config.google.credentials_file {
            config.google.credentials_file = Some(super::resolve_secret_path(path, base_dir));
        }
        config.validate_checked(needs.refresh_token)?;
        Ok(Loaded { config })
    }
}

/// `COSELL_SECTION__KEY` variables. Only names with a `__` are config keys (every key is in a
/// section): a stray `COSELL_LOG=debug` or `COSELL_CONFIG` is someone else's variable, not a
/// broken `[log]` table, and must not make the configuration invalid.
fn config_env() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

/// Converts figment's error list into key-named errors.
fn figment_errors(err: figment::Error) -> ConfigErrors {
    ConfigErrors(
        err.into_iter()
            .map(|e| {
                let key = e.path.join(".");
                let source = e
                    .metadata
                    .as_ref()
                    .map(|m| match &m.source {
                        Some(src) => format!(" (from {} {src})", m.name),
                        None => format!(" (from {})", m.name),
                    })
                    .unwrap_or_default();
                ConfigError::new(
                    if key.is_empty() { "config".into() } else { key },
                    format!("{}{source}", e.kind),
                )
            })
            .collect(),
    )
}

/// The configuration file exists, is a file and this process may read it; each failure says
/// which (a permission problem is not "does not exist": under systemd's `DynamicUser=` the
/// service cannot read a root-only `/etc/cosell-sync`).
fn check_readable(file: &Path) -> Result<(), ConfigErrors> {
    let error = |why: String| -> ConfigErrors {
        ConfigError::new(
            "config",
            format!("configuration file {} {why}", file.display()),
        )
        .into()
    };
    let permission = |e: std::io::Error| {
        error(format!(
            "cannot be read: permission denied ({e}): the file must be readable, and every directory above it searchable, by the user the daemon runs as (under systemd's DynamicUser= that is not root); it holds no secrets, so 0644 in a 0755 directory is fine"
        ))
    };
    match std::fs::metadata(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(error(
            "does not exist (set --config or COSELL_CONFIG)".into(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(permission(e)),
        Err(e) => Err(error(format!("cannot be read: {e}"))),
        Ok(m) if !m.is_file() => Err(error("is not a regular file".into())),
        Ok(_) => match std::fs::File::open(file) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(permission(e)),
            Err(e) => Err(error(format!("cannot be read: {e}"))),
        },
    }
}
