# The whole test suite: Rust unit + integration tests, the SDK conformance suite, then Codex CLI.
.PHONY: test test-rust test-conformance test-codex lint

test: test-rust test-conformance test-codex

test-rust:
	cargo test --all-targets

# Reuses the debug binary test-rust built (run.sh builds it as `cargo test` does).
test-conformance:
	bash tests/conformance/run.sh

# Codex CLI (npm, pinned in the script, kept in target/codex-npm) runs `codex exec` through ccproxy
# and the simulated upstream in a loopback-only network namespace; needs npm, unshare and ip.
test-codex:
	bash tests/codex/run.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
