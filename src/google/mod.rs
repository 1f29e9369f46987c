//! Google Cloud CRM Partners (`cloudcrmpartners` v1): service-account tokens ([`auth`]), the four
//! methods the API has ([`client`]), and a lenient model of leads and opportunities ([`model`]).
//! There is no list and no lookup by `externalSystemId`: the daemon tracks every resource name.

pub mod auth;
pub mod client;
pub mod model;

pub use auth::GoogleAuth;
pub use client::GoogleClient;
pub use model::{GoogleDate, Lead, Opportunity};

/// The OAuth scope of all four methods.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloudcrmpartners";
