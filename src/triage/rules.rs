//! The rule evaluator, pure (spec §7): the ordered `[[rules]]` compiled once, then for each
//! referral's [`Facts`] the first rule whose conditions all hold decides — `accept`,
//! `decline` with its reason, or `none` (which stops the evaluation: people decide). An
//! absent condition holds; a list holds when any entry matches; a `not_` list holds when the
//! value is none of its entries; a field the referral lacks fails every condition on it;
//! a value condition never holds for a deal in another currency.

use super::facts::Facts;
use crate::config::{RuleAction, RuleConfig};

/// What a rule decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RuleDecision {
    Accept,
    Decline {
        reason: String,
    },
    /// Leave it to people.
    None,
}

impl RuleDecision {
    /// `accept`, `decline` or `none` (as `rules test --json`, the alerts and `status` say).
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            RuleDecision::Accept => "accept",
            RuleDecision::Decline { .. } => "decline",
            RuleDecision::None => "none",
        }
    }

    pub(crate) fn reason(&self) -> Option<&str> {
        match self {
            RuleDecision::Decline { reason } => Some(reason),
            _ => None,
        }
    }
}

/// Inclusive bounds in one currency (`currency` alone: any amount in it).
#[derive(Debug, Clone)]
struct ValueBound {
    currency: String,
    min: Option<f64>,
    max: Option<f64>,
}

/// One rule, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) name: String,
    source: Option<String>,
    countries: Vec<String>,
    not_countries: Vec<String>,
    value: Option<ValueBound>,
    industries: Vec<String>,
    solutions: Vec<String>,
    products: Vec<String>,
    qualifications: Vec<String>,
    invited_by: Vec<String>,
    /// `Err`: a pattern that does not compile (only in a config that skipped validation):
    /// the rule never holds.
    customer: Option<Result<regex::Regex, ()>>,
    pub(crate) decision: RuleDecision,
}

/// The ordered rules of a config.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleSet {
    rules: Vec<Rule>,
}

/// The rule that decided a referral, and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Verdict<'a> {
    pub(crate) rule: &'a str,
    pub(crate) decision: &'a RuleDecision,
}

impl RuleSet {
    pub(crate) fn from_config(rules: &[RuleConfig]) -> RuleSet {
        RuleSet {
            rules: rules.iter().map(Rule::from_config).collect(),
        }
    }

    /// The first rule whose conditions all hold, or `None` when none does.
    pub(crate) fn decide(&self, facts: &Facts) -> Option<Verdict<'_>> {
        self.rules.iter().find(|r| r.holds(facts)).map(|r| Verdict {
            rule: &r.name,
            decision: &r.decision,
        })
    }

    #[cfg(test)]
    pub(crate) fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

impl Rule {
    fn from_config(c: &RuleConfig) -> Rule {
        let value = match (&c.currency, c.min_value, c.max_value) {
            (Some(currency), min, max) => Some(ValueBound {
                currency: currency.clone(),
                min,
                max,
            }),
            // A bound without a currency is a config error; unvalidated, it never holds.
            (None, Some(_), _) | (None, _, Some(_)) => Some(ValueBound {
                currency: String::new(),
                min: None,
                max: None,
            }),
            (None, None, None) => None,
        };
        let decision = match c.action {
            RuleAction::Accept => RuleDecision::Accept,
            RuleAction::Decline => RuleDecision::Decline {
                reason: c.reason.clone().unwrap_or_default(),
            },
            RuleAction::None => RuleDecision::None,
        };
        Rule {
            name: c.name.clone(),
            source: c.source.clone(),
            countries: c.countries.clone(),
            not_countries: c.not_countries.clone(),
            value,
            industries: c.industries.clone(),
            solutions: c.solutions.clone(),
            products: c.products.clone(),
            qualifications: c.qualifications.clone(),
            invited_by: c.invited_by.clone(),
            customer: c
                .customer
                .as_deref()
                .map(|p| crate::config::triage::compile_customer(p).map_err(|_| ())),
            decision,
        }
    }

    /// Whether every condition of this rule holds for these facts.
    pub(crate) fn holds(&self, f: &Facts) -> bool {
        let source = self.source.as_deref().is_none_or(|s| s == f.source);
        source
            && any_of(&self.countries, f.country.as_deref())
            && none_of(&self.not_countries, f.country.as_deref())
            && self.value_holds(f)
            && any_in(&self.industries, f.industries.as_deref())
            && any_in(&self.solutions, f.solutions.as_deref())
            && any_in(&self.products, f.products.as_deref())
            && any_of(&self.qualifications, f.qualification.as_deref())
            && any_of(&self.invited_by, f.invited_by.as_deref())
            && self.customer_holds(f)
    }

    fn value_holds(&self, f: &Facts) -> bool {
        let Some(bound) = &self.value else {
            return true;
        };
        let Some(money) = &f.value else {
            return false;
        };
        !bound.currency.is_empty()
            && money.currency.eq_ignore_ascii_case(&bound.currency)
            && bound.min.is_none_or(|min| money.amount >= min)
            && bound.max.is_none_or(|max| money.amount <= max)
    }

    fn customer_holds(&self, f: &Facts) -> bool {
        match (&self.customer, f.customer.as_deref()) {
            (None, _) => true,
            (Some(Ok(re)), Some(name)) => re.is_match(name),
            (Some(Err(())), _) | (Some(_), None) => false,
        }
    }
}

/// Codes and ids compare without regard to ASCII case (`us` is `US`).
fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// An empty list is an absent condition; otherwise the value must be present and listed.
fn any_of(list: &[String], value: Option<&str>) -> bool {
    list.is_empty() || value.is_some_and(|v| list.iter().any(|e| same(e, v)))
}

/// An empty list is an absent condition; otherwise the value must be present and unlisted.
fn none_of(list: &[String], value: Option<&str>) -> bool {
    list.is_empty() || value.is_some_and(|v| !list.iter().any(|e| same(e, v)))
}

/// An empty list is an absent condition; otherwise one of the referral's entries is listed.
fn any_in(list: &[String], values: Option<&[String]>) -> bool {
    list.is_empty() || values.is_some_and(|vs| vs.iter().any(|v| any_of(list, Some(v))))
}

#[cfg(test)]
mod tests;
