//! AWS Partner Central (the Partner Central Selling API, engagement invitations; spec §8,
//! `partner-apis.md` part D): SigV4 signing and its verifier ([`sigv4`]), the tolerant model of
//! the five operations' answers ([`model`]) and the client ([`client`]).
//!
//! Wired: `auth check`'s one read ([`client::AwsClient::from_config`]); the pull each cycle
//! ([`crate::sync::aws_pull`]) into the `referrals` table ([`crate::store::invitations`]), so
//! alerts, `status`, the inbox and the rules see invitations beside referrals; answers through
//! the one executor (`sync::push::aws_accept` and `aws_decline`).

pub mod client;
pub mod model;
pub mod sigv4;
