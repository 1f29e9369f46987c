//! One integration test binary (one link step): the Microsoft client against wiremock and the
//! simulator, and the commands end to end against the simulator — in this process
//! (`TestEnv::run`, the default) or through the binary (`TestEnv::cli`, for logs, signals,
//! kills). `IT_VIA_BINARY=1 cargo test --test it` sends every `run` through the binary too.

mod actions;
mod alerts;
mod answer;
mod aws;
mod aws_answers;
mod aws_config;
mod browser;
mod client;
mod commands;
mod daemon;
mod e2e;
mod google;
mod helpers;
mod hostile;
mod install;
mod kill;
mod lanes;
mod limits;
mod logs;
mod metrics;
mod recovery;
mod routing;
mod secret_files;
mod serve;
mod service_level;
mod sim;
mod triage;
mod webhook;
