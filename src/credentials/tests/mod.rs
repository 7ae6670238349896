//! Tests of the credential lifecycle.
