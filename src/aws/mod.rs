//! AWS Partner Central (the Partner Central Selling API, engagement invitations; spec §8,
//! `partner-apis.md` part D): SigV4 signing and its verifier ([`sigv4`]), the tolerant model of
//! the five operations' answers ([`model`]) and the client ([`client`]).
//!
//! Wired so far: `auth check`'s one read ([`client::AwsClient::from_config`]). Pulling
//! invitations into the store, their alerts and status, and answers through the one executor
//! come next (they build on the executor and triage refactors).

pub mod client;
pub mod model;
pub mod sigv4;
