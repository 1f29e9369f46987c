//! The evaluator's tables and its generated test.

use super::*;
use crate::config::RuleConfig;
use crate::triage::facts::{Money, MICROSOFT};

fn rule(name: &str, action: RuleAction) -> RuleConfig {
    RuleConfig {
        reason: (action == RuleAction::Decline).then(|| format!("reason of {name}")),
        ..RuleConfig::any(name, action)
    }
}

fn facts() -> Facts {
    Facts {
        source: MICROSOFT,
        country: Some("DE".into()),
        value: Some(Money {
            amount: 5000.0,
            currency: "EUR".into(),
        }),
        industries: Some(vec!["Retail".into()]),
        solutions: Some(vec!["SOL-1".into()]),
        products: Some(vec!["Azure".into(), "PowerBI".into()]),
        qualification: Some("SalesQualified".into()),
        invited_by: Some("msft".into()),
        customer: Some("Contoso Retail".into()),
    }
}

fn decided(rules: &[RuleConfig], f: &Facts) -> Option<(String, &'static str)> {
    RuleSet::from_config(rules)
        .decide(f)
        .map(|v| (v.rule.to_string(), v.decision.as_str()))
}

type Edit = fn(&mut RuleConfig);

/// One condition a table row: holds for [`facts`], or not.
#[test]
fn source_country_and_value_conditions_hold_as_spec_7_says() {
    let cases: Vec<(&str, Edit, bool)> = vec![
        ("no condition", |_| {}, true),
        ("source", |r| r.source = Some("microsoft".into()), true),
        ("other source", |r| r.source = Some("aws".into()), false),
        (
            "country listed",
            |r| r.countries = vec!["US".into(), "de".into()],
            true,
        ),
        (
            "country not listed",
            |r| r.countries = vec!["US".into()],
            false,
        ),
        (
            "not_countries without it",
            |r| r.not_countries = vec!["US".into()],
            true,
        ),
        (
            "not_countries with it",
            |r| r.not_countries = vec!["DE".into()],
            false,
        ),
        ("currency alone", |r| r.currency = Some("eur".into()), true),
        (
            "currency alone, other",
            |r| r.currency = Some("USD".into()),
            false,
        ),
        (
            "bounds inclusive",
            |r| {
                r.currency = Some("EUR".into());
                r.min_value = Some(5000.0);
                r.max_value = Some(5000.0);
            },
            true,
        ),
        (
            "below min",
            |r| {
                r.currency = Some("EUR".into());
                r.min_value = Some(5000.01);
            },
            false,
        ),
        (
            "above max",
            |r| {
                r.currency = Some("EUR".into());
                r.max_value = Some(4999.99);
            },
            false,
        ),
        (
            "in range but another currency",
            |r| {
                r.currency = Some("USD".into());
                r.max_value = Some(1e12);
            },
            false,
        ),
    ];
    check(cases);
}

/// The list and pattern conditions, a table row each.
#[test]
fn list_and_customer_conditions_hold_as_spec_7_says() {
    let cases: Vec<(&str, Edit, bool)> = vec![
        ("industry", |r| r.industries = vec!["Retail".into()], true),
        (
            "industry other",
            |r| r.industries = vec!["Health".into()],
            false,
        ),
        ("solution", |r| r.solutions = vec!["SOL-1".into()], true),
        (
            "product, any of the referral's",
            |r| r.products = vec!["PowerBI".into()],
            true,
        ),
        (
            "product other",
            |r| r.products = vec!["Dynamics".into()],
            false,
        ),
        (
            "qualification",
            |r| r.qualifications = vec!["SalesQualified".into()],
            true,
        ),
        (
            "qualification other",
            |r| r.qualifications = vec!["Direct".into()],
            false,
        ),
        (
            "invited by Microsoft",
            |r| r.invited_by = vec!["msft".into()],
            true,
        ),
        (
            "invited by a partner",
            |r| r.invited_by = vec!["1234".into()],
            false,
        ),
        (
            "customer regex, not anchored",
            |r| r.customer = Some("Retail".into()),
            true,
        ),
        (
            "customer regex, case-sensitive",
            |r| r.customer = Some("retail".into()),
            false,
        ),
        (
            "customer regex, (?i)",
            |r| r.customer = Some("(?i)^contoso".into()),
            true,
        ),
        ("empty list = absent", |r| r.countries = vec![], true),
        (
            "all hold",
            |r| {
                r.countries = vec!["DE".into()];
                r.products = vec!["Azure".into()];
                r.customer = Some("Contoso".into());
            },
            true,
        ),
        (
            "one of all fails",
            |r| {
                r.countries = vec!["DE".into()];
                r.products = vec!["Azure".into()];
                r.customer = Some("Fabrikam".into());
            },
            false,
        ),
    ];
    check(cases);
}

fn check(cases: Vec<(&str, Edit, bool)>) {
    for (what, edit, holds) in cases {
        let mut r = rule("r", RuleAction::Accept);
        edit(&mut r);
        assert_eq!(decided(&[r], &facts()).is_some(), holds, "{what}");
    }
}

/// A referral that lacks a field never satisfies a condition on it, `not_` ones included.
#[test]
fn a_missing_field_never_satisfies_a_condition() {
    type Lose = fn(&mut Facts);
    let cases: Vec<(Edit, Lose)> = vec![
        (
            |r| r.not_countries = vec!["US".into()],
            |f| f.country = None,
        ),
        (|r| r.countries = vec!["DE".into()], |f| f.country = None),
        (|r| r.currency = Some("EUR".into()), |f| f.value = None),
        (
            |r| {
                r.currency = Some("EUR".into());
                r.max_value = Some(1e9);
            },
            |f| f.value = None,
        ),
        (
            |r| r.industries = vec!["Retail".into()],
            |f| f.industries = None,
        ),
        (
            |r| r.solutions = vec!["SOL-1".into()],
            |f| f.solutions = None,
        ),
        (|r| r.products = vec!["Azure".into()], |f| f.products = None),
        (
            |r| r.qualifications = vec!["SalesQualified".into()],
            |f| f.qualification = None,
        ),
        (
            |r| r.invited_by = vec!["msft".into()],
            |f| f.invited_by = None,
        ),
        (|r| r.customer = Some(".*".into()), |f| f.customer = None),
    ];
    for (i, (edit, lose)) in cases.into_iter().enumerate() {
        let mut r = rule("r", RuleAction::Decline);
        edit(&mut r);
        let mut f = facts();
        assert!(
            decided(&[r.clone()], &f).is_some(),
            "case {i} holds with the field"
        );
        lose(&mut f);
        assert_eq!(decided(&[r], &f), None, "case {i} without the field");
    }
}

/// The first rule that holds decides; `none` stops the evaluation (an exception list).
#[test]
fn the_first_matching_rule_decides_and_none_stops_the_evaluation() {
    let mut keep = rule("keep-contoso", RuleAction::None);
    keep.customer = Some("Contoso".into());
    let mut abroad = rule("outside", RuleAction::Decline);
    abroad.not_countries = vec!["US".into()];
    let all = rule("take-all", RuleAction::Accept);
    let rules = [keep, abroad, all];
    assert_eq!(
        decided(&rules, &facts()),
        Some(("keep-contoso".into(), "none")),
        "none stops: the decline below never fires"
    );
    let mut other = facts();
    other.customer = Some("Fabrikam".into());
    assert_eq!(decided(&rules, &other), Some(("outside".into(), "decline")));
    other.country = Some("US".into());
    assert_eq!(decided(&rules, &other), Some(("take-all".into(), "accept")));
    let set = RuleSet::from_config(&rules[1..2]);
    other.country = Some("FR".into());
    let verdict = set.decide(&other).unwrap();
    assert_eq!(verdict.decision.reason(), Some("reason of outside"));
    assert!(RuleSet::from_config(&[]).decide(&other).is_none());
}

/// Hostile values: random texts from the config's generator, in every field.
fn hostile(rng: &mut fastrand::Rng) -> Option<String> {
    const NAMES: &[&str] = &[
        "DE", "US", "EUR", "USD", "Azure", "msft", "Retail", "Contoso",
    ];
    match rng.u8(0..4) {
        0 => None,
        1 => Some(NAMES[rng.usize(..NAMES.len())].to_string()),
        _ => Some(crate::config::hostile_text(rng, 12)),
    }
}

fn random_list(rng: &mut fastrand::Rng) -> Vec<String> {
    (0..rng.usize(0..3)).filter_map(|_| hostile(rng)).collect()
}

fn random_rule(rng: &mut fastrand::Rng, i: usize) -> RuleConfig {
    const PATTERNS: &[&str] = &["Contoso", "(?i)^c", "o$", "(?i)日", "\\d+", "a|b"];
    let action = [RuleAction::Accept, RuleAction::Decline, RuleAction::None][rng.usize(..3)];
    let mut r = rule(&format!("rule-{i}"), action);
    let maybe = |rng: &mut fastrand::Rng| rng.u8(0..3) == 0;
    if maybe(rng) {
        r.source = Some(["microsoft", "aws"][rng.usize(..2)].into());
    }
    if maybe(rng) {
        r.countries = random_list(rng);
    }
    if maybe(rng) {
        r.not_countries = random_list(rng);
    }
    if maybe(rng) {
        r.currency = hostile(rng);
        r.min_value = rng.bool().then(|| rng.f64() * 10_000.0);
        r.max_value = rng.bool().then(|| rng.f64() * 100_000.0);
    }
    for list in [&mut r.industries, &mut r.solutions, &mut r.products] {
        if maybe(rng) {
            *list = random_list(rng);
        }
    }
    if maybe(rng) {
        r.qualifications = random_list(rng);
    }
    if maybe(rng) {
        r.invited_by = random_list(rng);
    }
    if maybe(rng) {
        r.customer = Some(PATTERNS[rng.usize(..PATTERNS.len())].into());
    }
    r
}

fn random_facts(rng: &mut fastrand::Rng) -> Facts {
    let amounts = [0.0, -1.0, 5000.0, f64::MAX, f64::MIN_POSITIVE, 1e-300];
    Facts {
        source: ["microsoft", "aws"][rng.usize(..2)],
        country: hostile(rng),
        value: hostile(rng).map(|currency| Money {
            amount: if rng.bool() {
                amounts[rng.usize(..amounts.len())]
            } else {
                rng.f64() * 200_000.0
            },
            currency,
        }),
        industries: rng.bool().then(|| random_list(rng)),
        solutions: rng.bool().then(|| random_list(rng)),
        products: rng.bool().then(|| random_list(rng)),
        qualification: hostile(rng),
        invited_by: hostile(rng),
        customer: hostile(rng),
    }
}

/// Generated rule sets and referrals: the verdict is the first rule that holds (every rule
/// above it fails), a value rule never holds across currencies, a field taken away never
/// makes a rule hold that did not, and nothing panics.
#[test]
fn generated_rule_sets_first_match_wins_without_panics() {
    let mut rng = fastrand::Rng::with_seed(27);
    for _ in 0..3_000 {
        let configs: Vec<RuleConfig> = (0..rng.usize(0..6))
            .map(|i| random_rule(&mut rng, i))
            .collect();
        let set = RuleSet::from_config(&configs);
        let f = random_facts(&mut rng);
        let verdict = set.decide(&f);
        let holding: Vec<usize> = (0..set.rules().len())
            .filter(|&i| set.rules()[i].holds(&f))
            .collect();
        match verdict {
            Some(v) => {
                let first = holding[0];
                assert_eq!(v.rule, set.rules()[first].name, "{configs:?} {f:?}");
                assert_eq!(v.decision, &set.rules()[first].decision);
            }
            None => assert!(holding.is_empty()),
        }
        assert_eq!(set.decide(&f), verdict, "the same facts, the same verdict");
        for (i, c) in configs.iter().enumerate() {
            let r = &set.rules()[i];
            if let (Some(cur), Some(money)) = (&c.currency, &f.value) {
                if !cur.eq_ignore_ascii_case(&money.currency) {
                    assert!(!r.holds(&f), "a value rule across currencies: {c:?} {f:?}");
                }
            }
            // Taking a field away never makes a rule hold.
            let mut less = f.clone();
            match rng.u8(0..5) {
                0 => less.country = None,
                1 => less.value = None,
                2 => less.products = None,
                3 => less.customer = None,
                _ => less.invited_by = None,
            }
            if r.holds(&less) {
                assert!(r.holds(&f), "a missing field satisfied {c:?}: {less:?}");
            }
        }
    }
}
