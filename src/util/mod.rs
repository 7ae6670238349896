//! Small leaf helpers with no dependency on the rest of the crate.

pub mod fmt;
pub mod gate;
pub mod json;
pub mod memory;
pub mod names;
pub mod net;
pub mod time;
pub mod worker;
