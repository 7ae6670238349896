# The whole test suite: Rust unit + integration tests, then the SDK conformance suite.
.PHONY: test test-rust test-conformance lint

test: test-rust test-conformance

test-rust:
	cargo test --all-targets

# Reuses the debug binary test-rust built (run.sh builds it as `cargo test` does).
test-conformance:
	bash tests/conformance/run.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
