//! Microsoft Partner Center: the Entra ID refresh-token grant with its rotating token file
//! ([`auth`]), the Referrals API client ([`client`]), the lenient referral model ([`model`]) and
//! OData literal helpers ([`odata`]).

pub mod auth;
pub(crate) mod client;
pub mod model;
pub mod odata;

pub use auth::TokenSource;
pub use client::{
    MicrosoftClient, PageRequest, Paging, PatchOp, ReferralPage, WriteOutcome, MAX_PAGES,
};
pub use model::{
    Direction, ParsedReferral, Referral, ReferralStatus, ReferralSubstatus, RejectedRecord,
};

/// The scope of the Referrals API on the Entra v2 endpoint; `offline_access` keeps the
/// refresh token coming.
pub const SCOPE: &str = "https://api.partner.microsoft.com/.default offline_access";
/// The scope of the classic Partner Center API (webhook registrations live there, not on the
/// Referrals API host; partner-apis.md A.5).
pub const CLASSIC_SCOPE: &str = "https://api.partnercenter.microsoft.com/.default offline_access";
/// Path of the referrals collection under `api_base`.
pub const REFERRALS_PATH: &str = "/v1.0/engagements/referrals";
