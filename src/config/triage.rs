//! The `[triage]` section and the `[[rules]]` list (spec §7): whether rule decisions are only
//! shown (`dry-run`, the default) or sent as answers (`apply`), the hourly cap on rule answers,
//! and each rule's conditions and action, validated by key (`rules[2].reason`). Evaluating the
//! rules is [`crate::triage`]'s; this module only says what a valid rule is.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Whether rule decisions are a preview or answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriageMode {
    /// Decide, record and show; send nothing.
    #[default]
    DryRun,
    /// Queue each decision as an answer whose actor is `rule:NAME`.
    Apply,
}

impl TriageMode {
    /// `dry-run` or `apply`, as the config, the alerts and `status` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            TriageMode::DryRun => "dry-run",
            TriageMode::Apply => "apply",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriageConfig {
    pub mode: TriageMode,
    /// Rule answers sent in any sliding 60 minutes, at most; the rest wait, nearest
    /// deadline first (a wrong rule in apply mode costs at most this many answers an hour).
    pub max_answers_per_hour: u32,
}

impl Default for TriageConfig {
    fn default() -> Self {
        TriageConfig {
            mode: TriageMode::DryRun,
            max_answers_per_hour: 20,
        }
    }
}

/// What a rule does with a referral all of whose conditions hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Accept,
    Decline,
    /// Leave it to people; stops the evaluation (an exception above broader rules).
    None,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Accept => "accept",
            RuleAction::Decline => "decline",
            RuleAction::None => "none",
        }
    }
}

/// One `[[rules]]` entry. Every condition is optional (absent holds); a list holds when any
/// entry matches; an empty list is the same as an absent one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// `microsoft` or `aws`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// ISO 3166 alpha-2 codes of the customer's country.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_countries: Vec<String>,
    /// Inclusive bounds on the deal value, in `currency` (required with a bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value: Option<f64>,
    /// ISO 4217 code; alone, it matches deals in that currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub industries: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub solutions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qualifications: Vec<String>,
    /// Organization ids of who invited (`msft` = Microsoft itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invited_by: Vec<String>,
    /// A regular expression searched (not anchored) in the customer's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    pub action: RuleAction,
    /// Required for `decline`: it becomes `statusReason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RuleConfig {
    /// A rule with no condition (it holds for every referral), for tests to narrow with
    /// struct-update syntax.
    #[cfg(test)]
    pub(crate) fn any(name: &str, action: RuleAction) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            source: None,
            countries: vec![],
            not_countries: vec![],
            min_value: None,
            max_value: None,
            currency: None,
            industries: vec![],
            solutions: vec![],
            products: vec![],
            qualifications: vec![],
            invited_by: vec![],
            customer: None,
            action,
            reason: None,
        }
    }
}

/// The sources a rule can name (spec §7, §8).
pub const RULE_SOURCES: &[&str] = &["microsoft", "aws"];

/// The longest rule name (spec §7).
const MAX_NAME: usize = 64;

/// A regular expression larger than this compiled is refused: a rule runs over every
/// referral every cycle, so a pathological pattern would cost every cycle.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a rule's `customer` pattern exactly as the evaluator does (one place, so a
/// pattern that validates always compiles there).
pub(crate) fn compile_customer(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

impl TriageConfig {
    pub(crate) fn validate(&self, errors: &mut Vec<ConfigError>) {
        if self.max_answers_per_hour == 0 {
            errors.push(ConfigError::new(
                "triage.max_answers_per_hour",
                "must be at least 1 (to send no rule answers, keep mode = \"dry-run\")",
            ));
        }
    }
}

/// Every rule's problems, each naming its key (`rules[2].reason`).
pub(crate) fn validate_rules(rules: &[RuleConfig], errors: &mut Vec<ConfigError>) {
    for (i, rule) in rules.iter().enumerate() {
        let key = |k: &str| format!("rules[{i}].{k}");
        check_name(rules, i, errors);
        if let Some(source) = rule.source.as_deref() {
            if !RULE_SOURCES.contains(&source) {
                errors.push(ConfigError::new(
                    key("source"),
                    format!(
                        "{source:?} is not a source (one of: {})",
                        RULE_SOURCES.join(", ")
                    ),
                ));
            }
        }
        for (k, list) in [
            ("countries", &rule.countries),
            ("not_countries", &rule.not_countries),
        ] {
            for (j, code) in list.iter().enumerate() {
                if !is_country(code) {
                    errors.push(ConfigError::new(
                        format!("rules[{i}].{k}[{j}]"),
                        format!("{code:?} is not an ISO 3166 alpha-2 country code (e.g. \"US\", \"DE\")"),
                    ));
                }
            }
        }
        check_value(rule, i, errors);
        if let Some(pattern) = rule.customer.as_deref() {
            if let Err(e) = compile_customer(pattern) {
                errors.push(ConfigError::new(
                    key("customer"),
                    format!("{pattern:?} is not a regular expression: {}", one_line(&e)),
                ));
            }
        }
        check_reason(rule, i, errors);
    }
}

/// The regex crate's message spans lines (the pattern, a caret, the error); one line here.
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().map(str::trim).rfind(|l| !l.is_empty());
    last.unwrap_or("invalid")
        .trim_start_matches("error: ")
        .to_string()
}

fn check_name(rules: &[RuleConfig], i: usize, errors: &mut Vec<ConfigError>) {
    let name = &rules[i].name;
    let well_formed = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        errors.push(ConfigError::new(
            format!("rules[{i}].name"),
            format!("{name:?} must be 1 to {MAX_NAME} characters of A-Z, a-z, 0-9, - and _ (it is the audit's actor rule:NAME)"),
        ));
    } else if let Some(first) = rules[..i].iter().position(|r| &r.name == name) {
        errors.push(ConfigError::new(
            format!("rules[{i}].name"),
            format!("{name:?} is already the name of rules[{first}] (names are unique)"),
        ));
    }
}

fn check_value(rule: &RuleConfig, i: usize, errors: &mut Vec<ConfigError>) {
    for (k, bound) in [("min_value", rule.min_value), ("max_value", rule.max_value)] {
        let Some(v) = bound else { continue };
        if rule.currency.is_none() {
            errors.push(ConfigError::new(
                format!("rules[{i}].{k}"),
                format!(
                    "needs rules[{i}].currency: a deal value means nothing without its currency"
                ),
            ));
        }
        if !v.is_finite() {
            errors.push(ConfigError::new(
                format!("rules[{i}].{k}"),
                "must be a finite number",
            ));
        }
    }
    if let (Some(min), Some(max)) = (rule.min_value, rule.max_value) {
        if min > max {
            errors.push(ConfigError::new(
                format!("rules[{i}].max_value"),
                format!("{max} is below rules[{i}].min_value {min}: no deal could match"),
            ));
        }
    }
    if let Some(c) = rule.currency.as_deref() {
        if !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic())) {
            errors.push(ConfigError::new(
                format!("rules[{i}].currency"),
                format!("{c:?} is not an ISO 4217 currency code (e.g. \"USD\", \"EUR\")"),
            ));
        }
    }
}

fn check_reason(rule: &RuleConfig, i: usize, errors: &mut Vec<ConfigError>) {
    let key = format!("rules[{i}].reason");
    match (rule.action, rule.reason.as_deref()) {
        (RuleAction::Decline, None) => errors.push(ConfigError::new(
            key,
            "is missing: a decline rule needs the reason Partner Center records (statusReason)",
        )),
        (_, Some(r)) if r.trim().is_empty() => {
            errors.push(ConfigError::new(key, "must not be empty"))
        }
        (_, Some(r)) if r.chars().count() > super::actions::MAX_REASON_CHARS => {
            errors.push(ConfigError::new(
                key,
                format!(
                    "is longer than {} characters",
                    super::actions::MAX_REASON_CHARS
                ),
            ))
        }
        (_, Some(r)) if r.chars().any(char::is_control) => {
            errors.push(ConfigError::new(key, "must not contain control characters"))
        }
        _ => {}
    }
}

/// Whether `code` is an officially assigned ISO 3166-1 alpha-2 code (upper case, as
/// Partner Center and AWS send them; lower case is accepted too).
pub(crate) fn is_country(code: &str) -> bool {
    code.len() == 2 && ISO_3166_ALPHA2.contains(&code.to_ascii_uppercase().as_str())
}

/// The 249 officially assigned ISO 3166-1 alpha-2 codes.
const ISO_3166_ALPHA2: &[&str] = &[
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The commented `[[rules]]` of config.example.toml, uncommented, load and validate.
    #[test]
    fn the_example_rules_are_valid() {
        let file = include_str!("../../config.example.toml");
        let section: String = file
            .lines()
            .skip_while(|l| *l != "# [[rules]]")
            .take_while(|l| l.starts_with('#'))
            .filter(|l| !l.starts_with("# #"))
            .map(|l| format!("{}\n", l.trim_start_matches('#').trim_start()))
            .collect();
        #[derive(Deserialize)]
        struct Rules {
            rules: Vec<RuleConfig>,
        }
        let rules = toml::from_str::<Rules>(&section).unwrap().rules;
        assert_eq!(rules.len(), 4, "{section}");
        let mut errors = Vec::new();
        validate_rules(&rules, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn the_country_list_holds_every_assigned_code_once() {
        assert_eq!(ISO_3166_ALPHA2.len(), 249);
        let mut sorted = ISO_3166_ALPHA2.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 249);
        for good in ["US", "de", "GB", "IE"] {
            assert!(is_country(good), "{good}");
        }
        for bad in ["UK", "EU", "USA", "", "X", "é"] {
            assert!(!is_country(bad), "{bad}");
        }
    }
}
