#![forbid(unsafe_code)]
//! ccproxy: a proxy that lets Anthropic Messages API and OpenAI Chat Completions clients use Claude.

pub mod api;
pub mod claude_code;
pub mod cli;
pub mod commands;
pub mod config;
pub mod convert;
pub mod credentials;
pub mod error;
pub mod guard;
pub mod http;
pub mod observability;
pub mod pipeline;
pub mod server;
pub mod sim;
pub mod upstream;
pub mod util;
