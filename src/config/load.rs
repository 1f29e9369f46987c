//! Loading: compiled-in defaults, then the TOML file, then `COSELL_SECTION__KEY` env variables
//! (figment); the file check says exactly why a file cannot be read.

use std::path::{Path, PathBuf};

use figment::error::{Actual, Kind};
use figment::providers::{Env, Format, Toml};
use figment::value::Value;
use figment::{Figment, Source};

use super::types::NamedSections;
use super::{suggest, Config, ConfigError, ConfigErrors, DEFAULT_CONFIG_PATH, ENV_PREFIX};

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
    pub fn load_for_auth(file: &Path) -> Result<Loaded, ConfigErrors> {
        Self::load_checked(file, false)
    }

    /// For the commands that only read the database (`status`, `alerts list`, `outbox list`,
    /// `audit`, `reload`): the same validation, but no secret is read and no refresh token is
    /// needed, so they work from any shell that can read the config and the database.
    pub fn load_read_only(file: &Path) -> Result<Loaded, ConfigErrors> {
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
        let (config, mut errors) = extract_collecting(&figment);
        // Without any Config (a file that is not TOML) there is nothing left to check.
        let Some(mut config) = config else {
            return Err(ConfigErrors(errors));
        };
        config.named = named_sections(&figment);
        let base_dir = file.parent().unwrap_or(Path::new("."));
        if needs.secrets {
            if let Err(e) = config.resolve_secrets(base_dir) {
                errors.extend(e.0);
            }
        } else if let Some(path) = &config.google.credentials_file {
            config.google.credentials_file = Some(super::resolve_secret_path(path, base_dir));
        }
        if let Err(e) = config.validate_checked(needs.refresh_token) {
            // A key whose value could not be read was checked with its default; what that
            // says about it ("is missing") would only repeat the first error.
            for v in e.0 {
                if !errors.iter().any(|d| d.key == v.key) {
                    errors.push(v);
                }
            }
        }
        if errors.is_empty() {
            Ok(Loaded { config })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Which sections the file or the environment names: figment's merged tree holds only what
/// they gave (the compiled-in defaults are serde's, applied later), so a section is there
/// exactly when the operator wrote it, even empty, or set one of its `COSELL_SECTION__KEY`.
fn named_sections(figment: &Figment) -> NamedSections {
    let named = |section: &str| figment.find_value(section).is_ok();
    let in_file = |key: &&str| {
        let written = figment
            .find_value(key)
            .ok()
            .and_then(|v| v.into_string())
            .is_some_and(|v| !v.trim().is_empty());
        let from_file = figment
            .find_metadata(key)
            .is_some_and(|m| matches!(m.source, Some(Source::File(_))));
        written && from_file
    };
    NamedSections {
        no_microsoft: !named("microsoft"),
        inline_secrets: INLINE_SECRETS.iter().copied().filter(in_file).collect(),
    }
}

/// The secrets a configuration file may hold inline (each also has a `_file` form).
const INLINE_SECRETS: &[&str] = &[
    "microsoft.client_secret",
    "microsoft.refresh_token",
    "aws.secret_access_key",
];

/// At most this many bad keys are peeled off before giving up (a config has fewer keys).
const MAX_PEELS: usize = 256;

/// Reads the layered values into a [`Config`], collecting every key serde refuses instead
/// of the first one only.
///
/// Why this design: serde (and so figment) stops at the first error, and a hand-written
/// schema of every key's type would drift from the structs. So the merged values are taken
/// as figment's untyped tree, and the structs themselves stay the schema: deserialize; on an
/// error, record it (in plain words, see [`describe`]) and remove the offending key from the
/// tree (its compiled-in default applies), then deserialize again, until it succeeds. Every
/// wrong key costs one more pass over a tree of a few dozen keys. The result is a `Config`
/// the validation can then check too, so a file with a wrong type and a wrong value shows
/// both in one run.
fn extract_collecting(figment: &Figment) -> (Option<Config>, Vec<ConfigError>) {
    let mut tree: Value = match figment.extract() {
        Ok(tree) => tree,
        Err(e) => return (None, e.into_iter().map(|e| describe(figment, &e)).collect()),
    };
    let mut errors = Vec::new();
    let mut removed = RemovedItems::default();
    for _ in 0..MAX_PEELS {
        let failure = match tree.deserialize::<Config>() {
            Ok(config) => return (Some(config), errors),
            Err(e) => e,
        };
        // Every path of this pass is translated before any removal, and items are removed
        // from the end of a list first, so one removal never shifts another's index.
        let mut peel: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        for mut e in failure {
            let here = peel_path(&e);
            // Named by its place in the file, not in the tree with earlier items peeled off.
            e.path = removed.in_file(&e.path);
            errors.push(describe(figment, &e));
            peel.push((removed.in_file(&here), here));
        }
        peel.sort_by(|a, b| by_index(&b.1, &a.1));
        let mut peeled = false;
        for (in_file, here) in peel {
            if remove(&mut tree, &here) {
                peeled = true;
                removed.note(&in_file);
            }
        }
        if !peeled {
            break;
        }
    }
    (None, errors)
}

/// Orders paths segment by segment, list indexes as numbers.
fn by_index(a: &[String], b: &[String]) -> std::cmp::Ordering {
    let key = |s: &String| (s.parse::<usize>().ok(), s.clone());
    a.iter().map(key).cmp(b.iter().map(key))
}

/// The list items peeled off so far, by the list's path, as their indexes in the file: a
/// list's later items move down when one is removed, and an error about one of them must
/// still name the index the operator sees (`alerts.thresholds[2]`, not `[1]`).
#[derive(Default)]
struct RemovedItems(std::collections::HashMap<Vec<String>, Vec<usize>>);

impl RemovedItems {
    /// `path` (indexes in the peeled tree) with each index as it is in the file.
    fn in_file(&self, path: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(path.len());
        for segment in path {
            let index = segment.parse::<usize>().ok();
            match (index, self.0.get(&out)) {
                (Some(mut i), Some(gone)) => {
                    // `gone` is ascending: each removed item at or before `i` shifts it up.
                    for g in gone {
                        if *g <= i {
                            i += 1;
                        }
                    }
                    out.push(i.to_string());
                }
                _ => out.push(segment.clone()),
            }
        }
        out
    }

    /// Records that the item at `path` (in file indexes) was removed.
    fn note(&mut self, path: &[String]) {
        let Some((last, list)) = path.split_last() else {
            return;
        };
        if let Ok(i) = last.parse::<usize>() {
            let gone = self.0.entry(list.to_vec()).or_default();
            if let Err(at) = gone.binary_search(&i) {
                gone.insert(at, i);
            }
        }
    }
}

/// The part of the tree to drop so that the next pass gets past `e`: the unknown key itself,
/// the table that lacks a required key, or the value of the wrong type.
fn peel_path(e: &figment::Error) -> Vec<String> {
    full_path(e)
}

/// The path of the key an error is about. figment's path of an unknown key already ends in
/// the key; of a missing one, it may end at the table: then the key is added.
fn full_path(e: &figment::Error) -> Vec<String> {
    let mut path = e.path.clone();
    let name = match &e.kind {
        Kind::UnknownField(name, _) => Some(name.as_str()),
        Kind::MissingField(name) => Some(name.as_ref()),
        _ => None,
    };
    if let Some(name) = name {
        if path.last().map(String::as_str) != Some(name) {
            path.push(name.to_string());
        }
    }
    path
}

/// Removes `path` from the tree (a number indexes a list); whether anything was removed.
fn remove(tree: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = tree;
    for segment in parents {
        node = match node {
            Value::Dict(_, dict) => match dict.get_mut(segment) {
                Some(child) => child,
                None => return false,
            },
            Value::Array(_, items) => {
                match segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(child) => child,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match node {
        Value::Dict(_, dict) => dict.remove(last).is_some(),
        Value::Array(_, items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// `alerts.thresholds[1]` for the path `["alerts", "thresholds", "1"]`.
fn key_of(path: &[String]) -> String {
    let mut key = String::new();
    for segment in path {
        if segment.parse::<usize>().is_ok() && !key.is_empty() {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    key
}

/// One figment error as the operator should read it: the key, what it takes in plain words
/// (never serde's "u32" or "struct LogConfig"), what it got, where it came from, and the
/// nearest right word when the key or value looks misspelt. No message nests backticks.
fn describe(figment: &Figment, e: &figment::Error) -> ConfigError {
    let path = full_path(e);
    let key = key_of(&path);
    let section = match &e.kind {
        Kind::UnknownField(..) | Kind::MissingField(_) => key_of(&path[..path.len() - 1]),
        _ => key_of(&e.path),
    };
    let mut message = match &e.kind {
        Kind::UnknownField(name, known) if section.is_empty() => {
            let hint = suggest::did_you_mean(name, known.iter().copied())
                .map(|k| format!("; did you mean [{k}]?"))
                .unwrap_or_default();
            format!("is not a section of the configuration{hint}")
        }
        Kind::UnknownField(name, known) => {
            let hint = suggest::did_you_mean(name, known.iter().copied())
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            format!("is not a key of [{section}]{hint}")
        }
        Kind::MissingField(_) => "is missing".to_string(),
        Kind::UnknownVariant(got, words) => {
            let hint = suggest::did_you_mean(got, words.iter().copied())
                .map(|w| format!("; did you mean \"{w}\"?"))
                .unwrap_or_default();
            format!("{got:?} is not one of {}{hint}", one_of(words))
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => format!(
            "expected {}, got {}{}",
            plain_expected(expected, &key),
            plain_actual(actual),
            unquote_hint(actual, expected)
        ),
        Kind::InvalidLength(len, expected) => {
            format!(
                "expected {}, got a list of {len}",
                plain_expected(expected, &key)
            )
        }
        Kind::DuplicateField(name) => format!("sets {name} twice"),
        Kind::Message(text) => text.clone(),
        other => other.to_string().replace('`', ""),
    };
    if let Some(from) = source_of(figment, e, &path) {
        // Before the suggestion: "… (in FILE); did you mean …" reads in that order.
        let hint = ["; did you mean", "; write it without quotes"]
            .iter()
            .filter_map(|marker| message.find(marker))
            .min();
        match hint {
            Some(at) => message.insert_str(at, &format!(" ({from})")),
            None => message.push_str(&format!(" ({from})")),
        }
    }
    ConfigError::new(if key.is_empty() { "config".into() } else { key }, message)
}

/// `text, json or journald`.
fn one_of(words: &[&str]) -> String {
    match words {
        [] => "the accepted words".into(),
        [one] => format!("\"{one}\""),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(|w| format!("\"{w}\"")).collect();
            format!("{} or \"{last}\"", init.join(", "))
        }
    }
}

/// serde's name of a type, in the words of the config file.
fn plain_expected(expected: &str, key: &str) -> String {
    let whole = |max: u128| format!("a whole number from 0 to {max}");
    match expected {
        "u8" => whole(u8::MAX.into()),
        "u16" => whole(u16::MAX.into()),
        "u32" => whole(u32::MAX.into()),
        "u64" => whole(u64::MAX.into()),
        "usize" => whole(usize::MAX as u128),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number, like 5 or 2.5".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a string" | "a character" | "a borrowed string" | "string" | "char" => {
            "text in quotes".into()
        }
        "a sequence" | "a tuple" => "a list in brackets, like [\"a\", \"b\"]".into(),
        e if e.starts_with("struct ") || e == "a map" || e.starts_with("map") => {
            if key.is_empty() {
                "a table".into()
            } else {
                format!("a table like [{key}]")
            }
        }
        e if e.starts_with("enum ") || e.starts_with("variant") => {
            "one of this key's words, in quotes (config.example.toml lists them)".into()
        }
        other => other.replace('`', ""),
    }
}

/// `page_size = "100"`: a number or boolean in quotes is text to TOML; say so.
fn unquote_hint(actual: &Actual, expected: &str) -> String {
    let Actual::Str(text) = actual else {
        return String::new();
    };
    let number = expected.starts_with(['u', 'i', 'f']) && expected[1..].parse::<u8>().is_ok()
        || expected == "usize";
    let fits = (number && text.trim().parse::<f64>().is_ok())
        || (matches!(expected, "a boolean" | "bool") && matches!(text.trim(), "true" | "false"));
    if fits {
        format!("; write it without quotes: {}", text.trim())
    } else {
        String::new()
    }
}

/// What the file had, without serde's backticks.
fn plain_actual(actual: &Actual) -> String {
    match actual {
        Actual::Bool(b) => b.to_string(),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(f) => f.to_string(),
        Actual::Char(c) => format!("{:?}", c.to_string()),
        Actual::Str(s) => format!("{s:?}"),
        Actual::Seq => "a list".into(),
        Actual::Map => "a table".into(),
        Actual::Unit => "an empty value".into(),
        other => other.to_string().replace('`', ""),
    }
}

/// Where the value came from: the file's full path (figment's own display shortens it
/// relative to the working directory: under systemd that is `/`, so
/// `/etc/cosell-sync/config.toml` lost its leading slash), or the environment variable.
fn source_of(figment: &Figment, e: &figment::Error, path: &[String]) -> Option<String> {
    let dotted: Vec<&str> = path
        .iter()
        .filter(|s| s.parse::<usize>().is_err())
        .map(String::as_str)
        .collect();
    let metadata = e
        .metadata
        .as_ref()
        .or_else(|| figment.find_metadata(&dotted.join(".")))?;
    match &metadata.source {
        Some(Source::File(file)) => Some(format!("in {}", file.display())),
        Some(other) => Some(format!("from {other}")),
        None if metadata.name.contains("environment") && !dotted.is_empty() => Some(format!(
            "from the environment variable {ENV_PREFIX}{}",
            dotted.join("__").to_uppercase()
        )),
        None => None,
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
        Ok(m) if m.len() > crate::files::Kind::Config.max_bytes() => Err(error(format!(
            "is larger than {} bytes: not a cosell-sync configuration",
            crate::files::Kind::Config.max_bytes()
        ))),
        Ok(_) => match std::fs::File::open(file) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(permission(e)),
            Err(e) => Err(error(format!("cannot be read: {e}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated: items removed one at a time from a list, each named by its index in what is
    /// left; `in_file` must always give back its index in the original list.
    #[test]
    fn peeled_list_items_keep_their_index_in_the_file() {
        let mut rng = fastrand::Rng::with_seed(20);
        for _ in 0..2_000 {
            let len = rng.usize(1..40);
            let mut left: Vec<usize> = (0..len).collect();
            let mut removed = RemovedItems::default();
            let list = vec!["alerts".to_string(), "thresholds".to_string()];
            while !left.is_empty() && rng.bool() {
                let here = rng.usize(..left.len());
                let path = [list.clone(), vec![here.to_string()]].concat();
                let in_file = removed.in_file(&path);
                assert_eq!(in_file[2], left[here].to_string(), "{left:?}");
                removed.note(&in_file);
                left.remove(here);
            }
            // An index in another list is left alone.
            let other = vec!["sinks".to_string(), "3".to_string()];
            assert_eq!(removed.in_file(&other), other);
        }
    }
}
