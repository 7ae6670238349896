//! placeholder
pub struct ChatStreamConverter;
