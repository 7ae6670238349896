//! Several ccproxy replicas sharing their state on PostgreSQL (issue 14).
//!
//! Each test starts a throwaway PostgreSQL cluster (`initdb` in a temporary directory, run as
//! the unprivileged `postgres` user when the tests run as root, listening on a loopback port),
//! one simulated upstream, and three in-process ccproxy servers on loopback whose
//! `database_url` points at the cluster. PostgreSQL missing is a failure, not a skip: `.ci/run`
//! installs it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../support/mod.rs"]
mod support;

mod cluster;
mod commands;
mod fleet;
mod storage;

pub use cluster::*;
