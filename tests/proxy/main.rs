//! In-process integration tests: ccproxy started on a loopback port against the
//! simulated upstream, over real sockets (plus the converters' fuzz properties).
//! One binary, one module per concern; shared helpers live in `tests/support`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../support/mod.rs"]
mod support;

mod anthropic;
mod api2026;
mod caching;
mod connections;
mod faults;
mod fixture_replay;
mod fuzz;
mod hardening;
mod keys;
mod models;
mod oauth;
mod observability;
mod openai;
mod pool;
mod responses;
mod responses_ws;
mod retries;
mod security;
mod shutdown;
mod sim_tools;
mod upstream_conns;
mod upstream_h2c;
mod upstream_tls;
mod usage;
mod web_search;
