//! Black-box runs of the built binary (`config`, `sim`, `serve`, `auth`, `usage`)
//! and the usage store and dashboard it reads. One binary, one module per concern;
//! shared helpers live in `tests/support`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod commands;
mod dashboard;
mod first_run;
mod keys;
mod status;
mod usage_store;
