//! Wire types of the dialects the proxy speaks. Pure data: no I/O, and no imports from the rest of
//! the crate (the converters, the taps and the simulated upstream import these, never the reverse).
//!
//! - [`anthropic`]: the Messages API (request, response, stream events, usage, errors) and
//!   [`anthropic::Tokens`], the one token count type of the crate.
//! - [`openai`]: Chat Completions (the request side, borrowed; the usage object of responses).
//! - [`responses`]: the Responses API (request borrowed; response object, items, stream events).
//! - [`json`]: JSON text written by hand (strings escaped eight bytes at a time), byte for byte
//!   serde_json's.

pub mod anthropic;
pub mod json;
pub mod openai;
pub mod responses;

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A JSON string that borrows from the input when it can (no escape sequences) and owns otherwise.
///
/// `Option<Cow<'a, str>>` does not borrow with serde's derive; this newtype does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Str<'a>(pub Cow<'a, str>);

impl Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}
