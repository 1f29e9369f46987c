//! AWS Partner Central (the Partner Central Selling API, engagement invitations; spec §8,
//! `partner-apis.md` part D): SigV4 signing and its verifier ([`sigv4`]), the tolerant model of
//! the five operations' answers ([`model`]) and the client ([`client`]).
//!
//! Wired so far: `auth check`'s one read ([`client::AwsClient::from_config`]) and answers
//! through the one executor (`sync::push::aws_accept` and `aws_decline`, the client built
//! from `[aws]` beside the Microsoft and Google ones). Pulling invitations into the store,
//! their alerts and status come next.

pub mod client;
pub mod model;
pub mod sigv4;
