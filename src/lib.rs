#![forbid(unsafe_code)]
//! ccproxy: a proxy that lets Anthropic Messages API and OpenAI Chat Completions clients use Claude.
//!
//! Layers, each pointing only down (checked by `tests/architecture.rs`):
//! `commands`/`cli` → `server` → `pipeline` → `state` → (`upstream`, `credentials`,
//! `observability`, `response_store`, `access` → `keys`) → `error` → (`convert`, `claude_code`) → (`api`, `routes`).

pub mod access;
pub mod api;
pub mod claude_code;
pub mod cli;
pub mod commands;
pub mod config;
pub mod convert;
pub mod credentials;
pub mod db;
pub mod error;
pub mod http;
pub mod keys;
pub mod model_catalog;
pub mod observability;
pub mod pipeline;
pub mod response_store;
pub mod routes;
pub mod server;
pub mod sim;
pub mod state;
pub mod upstream;
pub mod util;
