//! Answering a referral from its alert (issue 18), off unless `[actions]` is set
//! ([`crate::config::actions`]): the signed links ([`link`]) every `referral_expiring` alert carries as
//! `action_url`, and the small page they open ([`page`]; the origin and actor checks every
//! browser-facing page shares in [`request_guard`]), and the team's [`inbox`] (spec §7) with
//! `actor_header`; every page's HTML is a maud template in `html`. The pages only queue the
//! answer and ring the executor's doorbell for answers: the one executor sends it at once,
//! without a cycle
//! ([`crate::sync::push::answer_referral`]).

mod html;
pub(crate) mod inbox;
pub(crate) mod page;
pub(crate) mod request_guard;

pub(crate) use crate::config::ActionsConfig;
pub use crate::links::LinkSigner;
