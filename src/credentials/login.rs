//! `ccproxy auth login`: the OAuth authorization-code flow with PKCE (S256), as Claude Code does it.
//!
//! The user opens the authorize URL, logs in, and the callback page shows `code#state`, which they
//! paste back. Input and output are any `BufRead`/`Write`, so the CLI passes stdin/stdout and tests
//! pass buffers.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use tracing::info;

use super::endpoint::TokenEndpoint;
use super::store::{self, OAuthCreds};
use super::{
    AUTHORIZE_URL_ENV, AccessToken, CredentialError, CredentialsConfig, DEFAULT_AUTHORIZE_URL,
    LOGIN_SCOPES, REDIRECT_URI, TOKEN_REQUEST_TIMEOUT, format_utc, now_ms,
};

/// A PKCE verifier/challenge pair and the `state` of one login attempt.
#[derive(Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
    pub state: String,
}

impl std::fmt::Debug for Pkce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

impl Pkce {
    /// 32 random bytes each for the verifier and the state, base64url without padding.
    pub fn generate() -> Self {
        let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let state = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        Self::from_parts(verifier, state)
    }

    /// The S256 challenge for a given verifier.
    pub fn from_parts(verifier: String, state: String) -> Self {
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
            state,
        }
    }
}

/// The authorize URL for `pkce` (query properly URL-encoded).
pub fn authorize_url(base: &str, client_id: &str, pkce: &Pkce) -> Result<String, CredentialError> {
    let url = reqwest::Url::parse_with_params(
        base,
        [
            ("code", "true"),
            ("client_id", client_id),
            ("response_type", "code"),
            ("redirect_uri", REDIRECT_URI),
            ("scope", LOGIN_SCOPES),
            ("code_challenge", pkce.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", pkce.state.as_str()),
        ],
    )
    .map_err(|e| CredentialError::Login(format!("invalid authorize URL `{base}`: {e}")))?;
    Ok(url.into())
}

/// How to run a login.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// The authorize endpoint (default [`DEFAULT_AUTHORIZE_URL`]).
    pub authorize_url: String,
    /// Try to open a browser on the URL.
    pub open_browser: bool,
}

impl LoginOptions {
    /// The authorize URL from `CCPROXY_OAUTH_AUTHORIZE_URL` (or the default); a browser is opened
    /// unless `no_browser` or no graphical session is detected.
    pub fn from_env(no_browser: bool) -> Self {
        let authorize_url = std::env::var(AUTHORIZE_URL_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_AUTHORIZE_URL.to_owned());
        Self {
            authorize_url,
            open_browser: !no_browser && browser_available(),
        }
    }
}

/// What a successful login produced (no secrets).
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub path: PathBuf,
    pub expires_at_ms: Option<i64>,
    pub masked_token: String,
    pub scopes: Vec<String>,
}

/// Runs the login: prints the authorize URL to `output` (and opens a browser when asked), reads
/// `code#state` (or the whole callback URL) from `input`, checks the state, exchanges the code at
/// the token URL and saves the credentials to `cfg.credentials_file` or else the own store
/// (mode 0600, directories created, other keys of an existing file kept).
pub async fn login(
    cfg: &CredentialsConfig,
    http: reqwest::Client,
    opts: &LoginOptions,
    mut input: impl BufRead,
    mut output: impl Write,
) -> Result<LoginOutcome, CredentialError> {
    let pkce = Pkce::generate();
    let url = authorize_url(&opts.authorize_url, &cfg.client_id, &pkce)?;
    show_authorize_url(&url, opts.open_browser, &mut output)?;
    let (code, state) = read_code(&mut input, &mut output)?;
    let state = check_state(state, &pkce)?;
    let creds = exchange_code(cfg, http, &code, &state, &pkce).await?;
    let path = cfg.login_target().to_path_buf();
    save_creds(&path, &creds).await?;
    info!(path = %path.display(), "saved Claude OAuth credentials from login");
    let outcome = LoginOutcome {
        path,
        expires_at_ms: creds.expires_at_ms,
        masked_token: creds.access_token.masked(),
        scopes: creds.scopes,
    };
    let expiry = match outcome.expires_at_ms {
        Some(ms) => format!("; the token expires at {}", format_utc(ms)),
        None => String::new(),
    };
    writeln!(
        output,
        "Logged in. Credentials saved to {}{expiry}.",
        outcome.path.display()
    )
    .map_err(io_err)?;
    Ok(outcome)
}

fn io_err(e: std::io::Error) -> CredentialError {
    CredentialError::Login(format!("terminal I/O failed: {e}"))
}

/// Prints the authorize URL, and opens a browser on it when asked.
fn show_authorize_url(
    url: &str,
    open: bool,
    output: &mut impl Write,
) -> Result<(), CredentialError> {
    writeln!(
        output,
        "Open this URL in a browser and log in with your Claude account:\n\n{url}\n"
    )
    .map_err(io_err)?;
    if open && open_browser(url) {
        writeln!(output, "(A browser window was opened.)").map_err(io_err)?;
    }
    Ok(())
}

/// Prompts until a non-blank paste; an error at end of input.
fn read_code(
    input: &mut impl BufRead,
    output: &mut impl Write,
) -> Result<(String, Option<String>), CredentialError> {
    loop {
        write!(output, "Paste the code shown after login (code#state): ").map_err(io_err)?;
        output.flush().map_err(io_err)?;
        let mut line = String::new();
        if input.read_line(&mut line).map_err(io_err)? == 0 {
            return Err(CredentialError::Login("no code was entered".to_owned()));
        }
        if let Some(parsed) = parse_pasted(&line) {
            return Ok(parsed);
        }
    }
}

/// The pasted state, which must be present and belong to this login attempt.
fn check_state(state: Option<String>, pkce: &Pkce) -> Result<String, CredentialError> {
    let Some(state) = state else {
        return Err(CredentialError::Login(
            "expected `code#state` (the whole value shown by the page); start again with `ccproxy auth login`"
                .to_owned(),
        ));
    };
    if state != pkce.state {
        return Err(CredentialError::Login(
            "the pasted state does not belong to this login attempt; start again with `ccproxy auth login`"
                .to_owned(),
        ));
    }
    Ok(state)
}

/// Exchanges the authorization code at the token URL for credentials.
async fn exchange_code(
    cfg: &CredentialsConfig,
    http: reqwest::Client,
    code: &str,
    state: &str,
    pkce: &Pkce,
) -> Result<OAuthCreds, CredentialError> {
    let endpoint = TokenEndpoint::new(
        http,
        cfg.token_url.clone(),
        cfg.client_id.clone(),
        TOKEN_REQUEST_TIMEOUT,
    );
    let grant = endpoint
        .exchange_code(code, state, &pkce.verifier, REDIRECT_URI)
        .await
        .map_err(|e| CredentialError::Login(format!("exchanging the code failed: {e}")))?;
    let now = now_ms();
    let expires_at_ms = grant
        .expires_in
        .map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    Ok(OAuthCreds {
        access_token: AccessToken::new(grant.access_token),
        refresh_token: grant.refresh_token,
        expires_at_ms,
        scopes: grant
            .scopes
            .unwrap_or_else(|| LOGIN_SCOPES.split_whitespace().map(str::to_owned).collect()),
        subscription_type: None,
    })
}

/// Saves `creds` to `path` on a blocking thread.
async fn save_creds(path: &Path, creds: &OAuthCreds) -> Result<(), CredentialError> {
    let (p, c) = (path.to_path_buf(), creds.clone());
    tokio::task::spawn_blocking(move || store::save_login(&p, &c))
        .await
        .map_err(|e| CredentialError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
}

/// Splits what the user pasted into `(code, state)`. Accepts `code#state`, a bare code (state
/// `None`), or the full callback URL. `None` for blank input.
pub fn parse_pasted(text: &str) -> Option<(String, Option<String>)> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.starts_with("http://") || text.starts_with("https://") {
        let url = reqwest::Url::parse(text).ok()?;
        let mut code = None;
        let mut state = None;
        for (k, v) in url.query_pairs() {
            match &*k {
                "code" => code = Some(v.into_owned()),
                "state" => state = Some(v.into_owned()),
                _ => {}
            }
        }
        if state.is_none() {
            state = url.fragment().map(str::to_owned);
        }
        return code.filter(|c| !c.is_empty()).map(|c| (c, state));
    }
    match text.split_once('#') {
        Some((code, state)) => {
            let code = code.trim();
            (!code.is_empty()).then(|| (code.to_owned(), Some(state.trim().to_owned())))
        }
        None => Some((text.to_owned(), None)),
    }
}

/// A graphical session is likely available (macOS always; elsewhere `DISPLAY`/`WAYLAND_DISPLAY`).
pub fn browser_available() -> bool {
    if cfg!(target_os = "macos") {
        return true;
    }
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Opens `url` with `open` (macOS) or `xdg-open`; true when the opener started.
fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    match Command::new(opener)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            // Reap it without blocking the login.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            true
        }
        Err(_) => false,
    }
}
