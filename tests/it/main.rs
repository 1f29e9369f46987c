//! One integration test binary (one link step): the Microsoft client against wiremock and the
//! simulator, and the binary end to end against the simulator.

mod alerts;
mod client;
mod daemon;
mod e2e;
mod google;
mod helpers;
mod webhook;
