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
    pub file: PathBuf,
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
    pub fn load_for_auth(file: &Path) -> Result<Loaded, ConfigErrors> {
        Self::load_checked(file, false)
    }

    fn load_checked(file: &Path, require_refresh_token: bool) -> Result<Loaded, ConfigErrors> {
        check_readable(file)?;
        let figment = Figment::new()
            .merge(Toml::file_exact(file))
            .merge(Env::prefixed(ENV_PREFIX).ignore(&["CONFIG"]).split("__"));
        Self::from_figment_checked(figment, file, require_refresh_token)
    }

    /// The part of [`Config::load`] after the file check; tests feed it a figment directly.
    pub fn from_figment(figment: Figment, file: &Path) -> Result<Loaded, ConfigErrors> {
        Self::from_figment_checked(figment, file, true)
    }

    fn from_figment_checked(
        figment: Figment,
        file: &Path,
        require_refresh_token: bool,
    ) -> Result<Loaded, ConfigErrors> {
        let mut config: Config = figment.extract().map_err(figment_errors)?;
        let base_dir = file.parent().unwrap_or(Path::new("."));
        config.resolve_secrets(base_dir)?;
        config.validate_checked(require_refresh_token)?;
        Ok(Loaded {
            config,
            file: file.to_path_buf(),
        })
    }
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
