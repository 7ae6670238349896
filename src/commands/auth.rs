//! `ccproxy auth login|status|refresh|logout`.
//!
//! Exit codes (documented in `--help` by the CLI and relied on by scripts):
//! - 0: success; for `status`, the credentials are usable: a request would succeed now, or after the
//!   automatic refresh that `status` performs exactly as a request would (only when the token is
//!   within the refresh window or expired).
//! - 1: no credentials found (or the explicit `--credentials-file` does not exist).
//! - 2: credentials unreadable or invalid (the message names the file).
//! - 3: (`status`) expired and not refreshable.
//! - 4: (`refresh`) the refresh failed.
//! - 5: (`login`) the login failed.

use std::io::{BufRead, Write};

use crate::credentials::manager::candidate_sources;
use crate::credentials::{
    self, CredentialError, CredentialsConfig, FIX_COMMAND, LoginOptions, OAuthManager, OAuthStatus,
    format_relative, format_utc, now_ms,
};

pub const EXIT_OK: i32 = 0;
pub const EXIT_NO_CREDENTIALS: i32 = 1;
pub const EXIT_INVALID: i32 = 2;
pub const EXIT_EXPIRED: i32 = 3;
pub const EXIT_REFRESH_FAILED: i32 = 4;
pub const EXIT_LOGIN_FAILED: i32 = 5;

/// What `ccproxy auth` should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthAction {
    Login { no_browser: bool },
    Status,
    Refresh,
    Logout,
}

/// Runs the action on the process's stdin/stdout/stderr; returns the exit code.
pub async fn run(action: AuthAction, cfg: CredentialsConfig) -> anyhow::Result<i32> {
    let http = crate::http::client_builder().build()?;
    let input = std::io::BufReader::new(std::io::stdin());
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let login = match action {
        AuthAction::Login { no_browser } => LoginOptions::from_env(no_browser),
        _ => LoginOptions::from_env(true),
    };
    run_with_io(action, cfg, http, &login, input, &mut out, &mut err).await
}

/// [`run`] with explicit I/O (tests drive it with buffers).
pub async fn run_with_io(
    action: AuthAction,
    cfg: CredentialsConfig,
    http: reqwest::Client,
    login: &LoginOptions,
    input: impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<i32> {
    match action {
        AuthAction::Login { .. } => {
            match credentials::login(&cfg, http, login, input, &mut *out).await {
                Ok(_) => Ok(EXIT_OK),
                Err(e) => {
                    writeln!(err, "error: {e}")?;
                    Ok(EXIT_LOGIN_FAILED)
                }
            }
        }
        AuthAction::Status => status(cfg, http, out, err).await,
        AuthAction::Refresh => refresh(cfg, http, out, err).await,
        AuthAction::Logout => logout(&cfg, http, out, err),
    }
}

/// Discovers the credentials, or prints why not and returns the exit code.
fn discover(
    cfg: &CredentialsConfig,
    http: reqwest::Client,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<Result<std::sync::Arc<OAuthManager>, i32>> {
    match OAuthManager::discover(cfg.clone(), http) {
        Ok(Some(m)) => Ok(Ok(m)),
        Ok(None) => {
            writeln!(out, "No Claude subscription credentials found. Looked in:")?;
            for s in candidate_sources(cfg) {
                writeln!(out, "  - {s}")?;
            }
            writeln!(out, "To fix: {FIX_COMMAND}.")?;
            Ok(Err(EXIT_NO_CREDENTIALS))
        }
        Err(e @ CredentialError::MissingFile { .. }) => {
            writeln!(err, "error: {e}")?;
            Ok(Err(EXIT_NO_CREDENTIALS))
        }
        Err(e) => {
            writeln!(err, "error: {e}")?;
            Ok(Err(EXIT_INVALID))
        }
    }
}

async fn status(
    cfg: CredentialsConfig,
    http: reqwest::Client,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<i32> {
    let manager = match discover(&cfg, http, out, err)? {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    let before = manager.status();
    if !before.refresh_due {
        print_status(out, &before)?;
        writeln!(out, "Status:         usable")?;
        return Ok(EXIT_OK);
    }
    // Do exactly what the next request would do: refresh (this rotates and saves the tokens).
    let result = manager.access_token().await;
    let after = manager.status();
    print_status(out, &after)?;
    match result {
        Ok(_) if after.masked_token != before.masked_token || !after.refresh_due => {
            writeln!(out, "Status:         usable (refreshed just now)")?;
            Ok(EXIT_OK)
        }
        Ok(_) if after.refresh_token_rejected => {
            writeln!(
                out,
                "Status:         usable until it expires, then not: {REJECTED}"
            )?;
            writeln!(err, "warning: {REJECTED}; to fix: {RELOGIN}.")?;
            Ok(EXIT_OK)
        }
        Ok(_) => {
            let why = after
                .last_refresh_error
                .unwrap_or_else(|| "refresh postponed".to_owned());
            writeln!(
                out,
                "Status:         usable until it expires; refreshing failed: {why}"
            )?;
            Ok(EXIT_OK)
        }
        Err(_) if after.refresh_token_rejected => {
            writeln!(out, "Status:         not usable: {REJECTED}")?;
            writeln!(err, "error: {REJECTED}; to fix: {RELOGIN}.")?;
            Ok(EXIT_EXPIRED)
        }
        Err(e) => {
            writeln!(out, "Status:         not usable")?;
            writeln!(err, "error: {e}")?;
            Ok(EXIT_EXPIRED)
        }
    }
}

/// What `invalid_grant` means for the user.
const REJECTED: &str = "the refresh token was rejected by the token endpoint (invalid_grant): it \
                        was revoked, or already used by another copy of these credentials";
/// What to do about it.
const RELOGIN: &str = "log in again with `ccproxy auth login` (or Claude Code's `claude`)";

fn print_status(out: &mut impl Write, st: &OAuthStatus) -> std::io::Result<()> {
    let now = now_ms();
    writeln!(out, "Source:         {}", st.source)?;
    writeln!(out, "Access token:   {}", st.masked_token)?;
    match st.expires_at_ms {
        Some(ms) if ms <= now => writeln!(
            out,
            "Expires:        expired {} ({})",
            format_relative(ms.saturating_sub(now)),
            format_utc(ms)
        )?,
        Some(ms) => writeln!(
            out,
            "Expires:        {} ({})",
            format_relative(ms.saturating_sub(now)),
            format_utc(ms)
        )?,
        None => writeln!(out, "Expires:        unknown (no expiresAt)")?,
    }
    writeln!(
        out,
        "Refresh token:  {}",
        match (st.has_refresh_token, st.refresh_token_rejected) {
            (true, true) => "rejected (invalid_grant)",
            (true, false) => "present",
            (false, _) => "none",
        }
    )?;
    writeln!(
        out,
        "Subscription:   {}",
        st.subscription_type.as_deref().unwrap_or("unknown")
    )?;
    writeln!(
        out,
        "Scopes:         {}",
        if st.scopes.is_empty() {
            "none listed".to_owned()
        } else {
            st.scopes.join(" ")
        }
    )
}

async fn refresh(
    cfg: CredentialsConfig,
    http: reqwest::Client,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<i32> {
    let manager = match discover(&cfg, http, out, err)? {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    match manager.refresh_now().await {
        Ok(token) => {
            let st = manager.status();
            writeln!(out, "Refreshed the token from {}.", st.source)?;
            writeln!(out, "Access token:   {token}")?;
            match st.expires_at_ms {
                Some(ms) => writeln!(
                    out,
                    "Expires:        {} ({})",
                    format_relative(ms.saturating_sub(now_ms())),
                    format_utc(ms)
                )?,
                None => writeln!(out, "Expires:        unknown")?,
            }
            if let Some(e) = st.last_refresh_error {
                writeln!(err, "warning: {e}")?;
            }
            Ok(EXIT_OK)
        }
        Err(e) => {
            writeln!(err, "error: refreshing failed: {e}")?;
            if matches!(&e, CredentialError::Endpoint(ep) if ep.kind == credentials::EndpointErrorKind::InvalidGrant)
            {
                writeln!(err, "{REJECTED}; to fix: {RELOGIN}.")?;
            } else if matches!(e, CredentialError::NoRefreshToken { .. }) {
                writeln!(err, "To fix: {FIX_COMMAND}.")?;
            }
            Ok(EXIT_REFRESH_FAILED)
        }
    }
}

fn logout(
    cfg: &CredentialsConfig,
    http: reqwest::Client,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<i32> {
    let own = &cfg.own_store;
    match std::fs::remove_file(own) {
        Ok(()) => writeln!(
            out,
            "Removed ccproxy's stored credentials {}.",
            own.display()
        )?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => writeln!(
            out,
            "ccproxy has no stored credentials ({} does not exist); nothing removed.",
            own.display()
        )?,
        Err(e) => {
            writeln!(err, "error: cannot remove {}: {e}", own.display())?;
            return Ok(EXIT_INVALID);
        }
    }
    if let Some(file) = cfg.credentials_file.as_ref().filter(|f| *f != own) {
        writeln!(
            out,
            "Left {} alone (given with --credentials-file): ccproxy only removes its own store.",
            file.display()
        )?;
    }
    writeln!(
        out,
        "Claude Code's credentials are never removed by ccproxy (log out of Claude Code with `claude /logout`)."
    )?;
    let mut rest = cfg.clone();
    rest.credentials_file = None;
    if let Ok(Some(m)) = OAuthManager::discover(rest, http) {
        writeln!(
            out,
            "Note: ccproxy will still find credentials in {}.",
            m.source()
        )?;
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    //! The `auth` command against a loopback mock token endpoint (the credential
    //! tests' fixtures, used one way: commands → credentials).

    use super::{AuthAction, run_with_io};
    use crate::credentials::CredentialsConfig;
    use crate::credentials::now_ms;
    use crate::credentials::tests::mock::MockTokenServer;
    use crate::credentials::tests::{
        Env, OLD_ACCESS, doc, http, login_options, secs, setup_claude, write_json,
    };

    async fn run_cmd(action: AuthAction, cfg: &CredentialsConfig) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with_io(
            action,
            cfg.clone(),
            http(),
            &login_options(),
            std::io::Cursor::new(""),
            &mut out,
            &mut err,
        )
        .await
        .expect("runs");
        (
            code,
            String::from_utf8(out).expect("utf8"),
            String::from_utf8(err).expect("utf8"),
        )
    }

    #[tokio::test]
    async fn auth_status_refresh_and_logout() {
        let mock = MockTokenServer::start().await;
        let env = Env::new(&mock.url);

        let (code, out, _) = run_cmd(AuthAction::Status, &env.cfg).await;
        assert_eq!(code, 1);
        assert!(
            out.contains(".claude/.credentials.json") && out.contains("ccproxy auth login"),
            "{out}"
        );

        setup_claude(&env, &mock, now_ms() + secs(3 * 3600));
        let (code, out, _) = run_cmd(AuthAction::Status, &env.cfg).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("Claude Code credentials file"), "{out}");
        assert!(
            out.contains("sk-ant-oat01-…WXYZ") && !out.contains(OLD_ACCESS),
            "{out}"
        );
        assert!(out.contains("in 2h 59m") && out.contains(" UTC)"), "{out}");
        assert!(
            out.contains("Subscription:   max") && out.contains("user:inference user:profile"),
            "{out}"
        );
        assert_eq!(mock.refresh_calls(), 0);

        let (code, out, _) = run_cmd(AuthAction::Refresh, &env.cfg).await;
        assert_eq!(code, 0, "{out}");
        // 8 h from the refresh, shown in the same millisecond or a little later.
        assert!(
            out.contains("Refreshed") && (out.contains("in 7h 59m") || out.contains("in 8h 0m")),
            "{out}"
        );
        assert_eq!(mock.refresh_calls(), 1);
        for s in mock.issued_tokens() {
            assert!(!out.contains(&s));
        }

        // Expired with a dead refresh token: not usable.
        write_json(
            &env.claude_file(),
            &doc(OLD_ACCESS, Some("sk-ant-ort01-dead"), now_ms() - secs(120)),
        );
        let (code, out, err) = run_cmd(AuthAction::Status, &env.cfg).await;
        assert_eq!(code, 3, "{out}{err}");
        assert!(
            out.contains("expired 2m") && err.contains("ccproxy auth login"),
            "{out}{err}"
        );
        assert!(
            out.contains("Refresh token:  rejected (invalid_grant)")
                && out.contains("Status:         not usable: the refresh token was rejected"),
            "{out}"
        );
        assert!(
            err.contains("log in again with `ccproxy auth login` (or Claude Code's `claude`)"),
            "{err}"
        );
        let (code, _, err) = run_cmd(AuthAction::Refresh, &env.cfg).await;
        assert_eq!(code, 4);
        assert!(
            err.contains("invalid_grant") && err.contains("ccproxy auth login"),
            "{err}"
        );

        // Rejected while the token is still valid (in the refresh window): usable until it
        // expires, and the user is told to log in again before then.
        write_json(
            &env.claude_file(),
            &doc(OLD_ACCESS, Some("sk-ant-ort01-dead"), now_ms() + secs(60)),
        );
        let (code, out, err) = run_cmd(AuthAction::Status, &env.cfg).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("usable until it expires, then not: the refresh token was rejected"),
            "{out}"
        );
        assert!(err.contains("ccproxy auth login"), "{err}");

        // Expired but refreshable: status refreshes like a request would.
        setup_claude(&env, &mock, now_ms() - secs(120));
        let (code, out, _) = run_cmd(AuthAction::Status, &env.cfg).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("refreshed just now"), "{out}");

        // Invalid file.
        std::fs::write(env.claude_file(), b"{").expect("write");
        let (code, _, err) = run_cmd(AuthAction::Status, &env.cfg).await;
        assert_eq!(code, 2);
        assert!(err.contains(".credentials.json"), "{err}");

        // Logout removes only the own store.
        setup_claude(&env, &mock, now_ms() + secs(3600));
        write_json(
            &env.cfg.own_store,
            &doc("sk-ant-oat01-own-store-token", None, now_ms() + secs(3600)),
        );
        let (code, out, _) = run_cmd(AuthAction::Logout, &env.cfg).await;
        assert_eq!(code, 0);
        assert!(!env.cfg.own_store.exists());
        assert!(
            env.claude_file().exists(),
            "Claude Code's file is never removed"
        );
        assert!(
            out.contains("never removed") && out.contains("will still find credentials"),
            "{out}"
        );
        let (code, out, _) = run_cmd(AuthAction::Logout, &env.cfg).await;
        assert_eq!(code, 0);
        assert!(out.contains("nothing removed"), "{out}");

        // Explicit file given: left alone too.
        let mut cfg = env.cfg.clone();
        cfg.credentials_file = Some(env.claude_file());
        let (code, out, _) = run_cmd(AuthAction::Logout, &cfg).await;
        assert_eq!(code, 0);
        assert!(out.contains("Left") && env.claude_file().exists(), "{out}");

        // Explicit file missing.
        cfg.credentials_file = Some(env.dir.path().join("missing.json"));
        let (code, _, err) = run_cmd(AuthAction::Status, &cfg).await;
        assert_eq!(code, 1);
        assert!(err.contains("missing.json"), "{err}");
    }

    #[tokio::test]
    async fn auth_login_command() {
        let mock = MockTokenServer::start().await;
        let env = Env::new(&mock.url);
        let (code, _, err) = run_cmd(AuthAction::Login { no_browser: true }, &env.cfg).await;
        assert_eq!(code, 5);
        assert!(err.contains("no code"), "{err}");
    }
}
