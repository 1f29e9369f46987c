//! Recovery from Partner Center (spec §2 "Forward", issue 15): Google has no list and no
//! lookup by `externalSystemId`, so the write-back into a referral's `externalReferenceId` is
//! the one durable record of a link outside the database. A referral that names a Google
//! record of this partner, and that the database does not link (a lost database, a restored
//! backup), is *adopted*: the record is read, its `externalSystemId` checked against the
//! referral, and the link stored — never a create, never an overwrite of the name. A name
//! that does not resolve, or resolves to another referral's record, is a dead action (an
//! `action_failed` alert) for a person.
//!
//! This module owns the pure tests of a name ([`named_record`], [`reference_kept`]): no I/O,
//! so the planner may use them. The adoption is an action kind
//! ([`super::push::adopt_link`]); the guard every lead create passes first is the create's
//! ([`super::push::create_lead`]).

use crate::google::model::resource_kind;

/// What a referral's `externalReferenceId` names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Named {
    /// A lead or opportunity of this partner: adopt it.
    Ours(String),
    /// A Google record of another partner: never overwritten, never a create.
    OtherPartner(String),
    /// Nothing Google (empty, or some other system's reference).
    Nothing,
}

/// Reads `externalReferenceId` (pure): a Google resource name of `partner_id` is ours.
pub(crate) fn named_record(external_reference_id: Option<&str>, partner_id: &str) -> Named {
    let Some(name) = external_reference_id
        .map(str::trim)
        .filter(|n| !n.is_empty())
    else {
        return Named::Nothing;
    };
    if resource_kind(name).is_none() {
        return Named::Nothing;
    }
    match name.split('/').nth(1) {
        Some(p) if p == partner_id => Named::Ours(name.to_string()),
        _ => Named::OtherPartner(name.to_string()),
    }
}

/// Whether `name` looks like a Google CRM Partners resource name (of any partner): a value
/// the write-back must never overwrite with another.
pub(crate) fn is_google_name(name: &str) -> bool {
    resource_kind(name.trim()).is_some()
}

/// Whether a write-back of `/externalReferenceId` may replace `current`: never a Google name
/// other than the one being written (checked again right before the PATCH, on the stored
/// copy the PATCH's If-Match is about).
pub(crate) fn may_replace_reference(current: Option<&str>, new: &str) -> bool {
    match current.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => c == new || !is_google_name(c),
        None => true,
    }
}

/// The write-back guard on a referral patch: `Some(why)` when one of `ops` would replace
/// the stored `externalReferenceId` that names another Google record.
pub(crate) fn reference_kept(
    stored: &serde_json::Value,
    ops: &[crate::microsoft::PatchOp],
) -> Option<String> {
    let current = stored.get("externalReferenceId").and_then(|v| v.as_str());
    ops.iter()
        .filter(|op| op.path == "/externalReferenceId")
        .find_map(|op| {
            let new = op.value.as_str().unwrap_or_default();
            (!may_replace_reference(current, new)).then(|| {
                format!(
                    "not written: externalReferenceId already names {}, another Google record than {new}",
                    current.unwrap_or_default()
                )
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_strictly() {
        let cases = [
            (
                Some("partners/1/leads/7"),
                Named::Ours("partners/1/leads/7".into()),
            ),
            (
                Some(" partners/1/opportunities/9 "),
                Named::Ours("partners/1/opportunities/9".into()),
            ),
            (
                Some("partners/2/leads/7"),
                Named::OtherPartner("partners/2/leads/7".into()),
            ),
            (Some("partners/1/leads/"), Named::Nothing),
            (Some("partners/1/leads/7/x"), Named::Nothing),
            (Some("CRM-1234"), Named::Nothing),
            (Some(""), Named::Nothing),
            (None, Named::Nothing),
        ];
        for (input, expected) in cases {
            assert_eq!(named_record(input, "1"), expected, "{input:?}");
        }
    }

    #[test]
    fn generated_references_never_panic_and_only_exact_names_are_ours() {
        let mut rng = fastrand::Rng::with_seed(15);
        let parts = [
            "partners",
            "1",
            "2",
            "leads",
            "opportunities",
            "",
            "x",
            "/",
            " ",
        ];
        for _ in 0..5000 {
            let n = rng.usize(0..7);
            let text: String = (0..n)
                .map(|_| parts[rng.usize(0..parts.len())])
                .collect::<Vec<_>>()
                .join(if rng.bool() { "/" } else { "" });
            if let Named::Ours(name) = named_record(Some(&text), "1") {
                let p: Vec<&str> = name.split('/').collect();
                assert_eq!(p.len(), 4, "{text:?}");
                assert_eq!((p[0], p[1]), ("partners", "1"), "{text:?}");
                assert!(!p[3].is_empty(), "{text:?}");
            }
        }
    }

    #[test]
    fn a_google_name_is_never_replaced_by_another() {
        assert!(may_replace_reference(None, "partners/1/leads/7"));
        assert!(may_replace_reference(Some(""), "partners/1/leads/7"));
        assert!(may_replace_reference(Some("CRM-12"), "partners/1/leads/7"));
        assert!(may_replace_reference(
            Some("partners/1/leads/7"),
            "partners/1/leads/7"
        ));
        assert!(!may_replace_reference(
            Some("partners/1/leads/8"),
            "partners/1/leads/7"
        ));
        assert!(!may_replace_reference(
            Some("partners/9/opportunities/8"),
            "partners/1/leads/7"
        ));
    }
}
