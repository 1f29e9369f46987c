//! Google Cloud CRM Partners (`cloudcrmpartners` v1): service-account tokens ([`auth`]), the four
//! methods the API has ([`client`]), and a lenient model of leads and opportunities ([`model`]).
//! There is no list and no lookup by `externalSystemId`: the daemon tracks every resource name.

pub(crate) mod auth;
pub(crate) mod client;
pub(crate) mod model;

pub(crate) use auth::GoogleAuth;
pub(crate) use client::GoogleClient;
pub(crate) use model::{GoogleDate, Lead, Opportunity};

/// The OAuth scope of all four methods.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/cloudcrmpartners";
