//! AWS Partner Central (the Partner Central Selling API, engagement invitations; spec §8,
//! `partner-apis.md` part D): SigV4 signing and its verifier ([`sigv4`]), the tolerant model of
//! the five operations' answers ([`model`]) and the client ([`client`]).
//!
//! Pulled each cycle by [`crate::sync::aws_pull`] into the `referrals` table
//! ([`crate::store::invitations`]), so alerts and `status` see invitations beside referrals.

pub mod client;
pub mod model;
pub mod sigv4;
