//! Wire types of the dialects the proxy speaks to clients. Pure data: no I/O.

pub mod openai;
