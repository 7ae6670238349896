//! The credentials document (Claude Code's format), its files and the sources it is read from.
//!
//! The document is kept as a `serde_json::Map` (insertion order preserved) so every key we do not
//! understand, at the top level and inside `claudeAiOauth`, survives every write. Parsing is done by
//! hand on a `serde_json::Value` so no error message can echo a value from the file.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::keychain;
use super::{AccessToken, CredentialError, Secret, SourceInfo, SourceKind};

/// The key Claude Code keeps its subscription credentials under.
pub const OAUTH_KEY: &str = "claudeAiOauth";
/// Files larger than this are not credentials files.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The fields of `claudeAiOauth` that ccproxy uses.
#[derive(Clone, Debug)]
pub(crate) struct OAuthCreds {
    pub access_token: AccessToken,
    pub refresh_token: Option<Secret>,
    pub expires_at_ms: Option<i64>,
    pub scopes: Vec<String>,
    pub subscription_type: Option<String>,
}

impl OAuthCreds {
    /// Same tokens (constant-time comparisons).
    pub(crate) fn same_tokens(&self, other: &Self) -> bool {
        self.access_token == other.access_token && self.refresh_token == other.refresh_token
    }
}

/// A parsed document: the whole JSON object plus the credentials in it, if any.
#[derive(Clone, Debug)]
pub(crate) struct Document {
    pub root: Map<String, Value>,
    pub creds: Option<OAuthCreds>,
}

/// Parses a credentials document. The error is a reason (no values from the file).
pub(crate) fn parse_document(bytes: &[u8]) -> Result<Document, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".to_owned());
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "truncated JSON (unexpected end of data)",
            serde_json::error::Category::Syntax => "malformed JSON",
            serde_json::error::Category::Data => "unexpected JSON data",
            serde_json::error::Category::Io => "unreadable data",
        };
        format!("{what} at line {} column {}", e.line(), e.column())
    })?;
    let Value::Object(root) = value else {
        return Err("the top level is not a JSON object".to_owned());
    };
    let creds = match root.get(OAUTH_KEY) {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(parse_oauth(o)?),
        Some(_) => return Err(format!("`{OAUTH_KEY}` is not a JSON object")),
    };
    Ok(Document { root, creds })
}

fn parse_oauth(o: &Map<String, Value>) -> Result<OAuthCreds, String> {
    let access_token = match o.get("accessToken") {
        Some(Value::String(s)) if !s.trim().is_empty() => AccessToken::new(s.trim()),
        Some(Value::String(_)) => return Err(format!("`{OAUTH_KEY}.accessToken` is empty")),
        None | Some(Value::Null) => return Err(format!("`{OAUTH_KEY}.accessToken` is missing")),
        Some(_) => return Err(format!("`{OAUTH_KEY}.accessToken` is not a string")),
    };
    let refresh_token = match o.get("refreshToken") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(Secret(s.trim().to_owned())),
        Some(_) => return Err(format!("`{OAUTH_KEY}.refreshToken` is not a string")),
    };
    let expires_at_ms =
        match o.get("expiresAt") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(number_to_i64(n).ok_or_else(|| {
                format!("`{OAUTH_KEY}.expiresAt` is not a time in epoch milliseconds")
            })?),
            Some(Value::String(s)) => Some(s.trim().parse::<i64>().map_err(|_| {
                format!("`{OAUTH_KEY}.expiresAt` is not a time in epoch milliseconds")
            })?),
            Some(_) => {
                return Err(format!(
                    "`{OAUTH_KEY}.expiresAt` is not a time in epoch milliseconds"
                ));
            }
        };
    let scopes = match o.get("scopes") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    let subscription_type = o
        .get("subscriptionType")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(OAuthCreds {
        access_token,
        refresh_token,
        expires_at_ms,
        scopes,
        subscription_type,
    })
}

fn number_to_i64(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if let Some(u) = n.as_u64() {
        return Some(i64::try_from(u).unwrap_or(i64::MAX));
    }
    let f = n.as_f64()?;
    if !f.is_finite() {
        return None;
    }
    // `as` saturates for out-of-range floats.
    Some(f as i64)
}

/// Writes `creds` into the document, keeping every other key (and the order of existing keys).
pub(crate) fn apply_creds(root: &mut Map<String, Value>, creds: &OAuthCreds) {
    let entry = root
        .entry(OAUTH_KEY.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    let Value::Object(o) = entry else {
        return;
    };
    o.insert(
        "accessToken".to_owned(),
        Value::String(creds.access_token.secret().to_owned()),
    );
    if let Some(rt) = &creds.refresh_token {
        o.insert(
            "refreshToken".to_owned(),
            Value::String(rt.expose().to_owned()),
        );
    }
    match creds.expires_at_ms {
        Some(ms) => {
            o.insert("expiresAt".to_owned(), Value::from(ms));
        }
        None => {
            o.shift_remove("expiresAt");
        }
    }
    o.insert(
        "scopes".to_owned(),
        Value::Array(creds.scopes.iter().cloned().map(Value::String).collect()),
    );
    if let Some(sub) = &creds.subscription_type {
        o.insert("subscriptionType".to_owned(), Value::String(sub.clone()));
    } else if !o.contains_key("subscriptionType") {
        o.insert("subscriptionType".to_owned(), Value::Null);
    }
}

/// Serializes a document (compact, like Claude Code).
pub(crate) fn serialize(root: &Map<String, Value>) -> Vec<u8> {
    // Serializing a Map of Values cannot fail; fall back to an empty object regardless.
    serde_json::to_vec(root).unwrap_or_else(|_| b"{}".to_vec())
}

/// Reads a file; `Ok(None)` when it does not exist.
pub(crate) fn read_file(path: &Path) -> Result<Option<Vec<u8>>, CredentialError> {
    let read_err = |e: io::Error| CredentialError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(CredentialError::Invalid {
            path: path.to_path_buf(),
            reason: "it is a directory".to_owned(),
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(CredentialError::Invalid {
            path: path.to_path_buf(),
            reason: format!("it is larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    Ok(Some(bytes))
}

/// The permission bits of a file when group or others may access it (it holds secrets).
pub(crate) fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Writes `bytes` to `path` atomically: a temporary file (mode 0600) in the same directory, fsync,
/// rename over the target, fsync of the directory. A crash leaves either the old or the new file.
/// A symlinked target is written through (the link is kept). Missing parent directories are created
/// (mode 0700) only when `create_dirs` is set.
pub(crate) fn write_atomic(
    path: &Path,
    bytes: &[u8],
    create_dirs: bool,
) -> Result<(), CredentialError> {
    let target = write_target(path);
    let werr = |e: io::Error| CredentialError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let (dir, file_name) = dir_and_name(&target);
    if create_dirs && !dir.exists() {
        create_private_dir(&dir).map_err(werr)?;
    }
    let tmp = dir.join(temp_name(&file_name, std::process::id(), rand::random()));
    let result = (|| -> io::Result<()> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            // The umask cannot widen 0600, but be explicit in case the file system ignored `mode`.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &target)?;
        // Make the rename durable; not every platform lets a directory be opened, so best effort.
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

/// The file a write to `path` replaces: the target of a symlink (the link is kept).
fn write_target(path: &Path) -> PathBuf {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// The directory of `target` and its file name.
fn dir_and_name(target: &Path) -> (PathBuf, String) {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "credentials.json".to_owned());
    (dir, file_name)
}

/// The temporary file [`write_atomic`] writes before renaming it over `file_name`:
/// `.<file_name>.tmp-<pid>-<16 hex digits>`.
fn temp_name(file_name: &str, pid: u32, nonce: u64) -> String {
    format!(".{file_name}.tmp-{pid}-{nonce:016x}")
}

/// Whether `name` is exactly a [`temp_name`] for `file_name`.
pub(crate) fn is_temp_name(name: &str, file_name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix('.')
        .and_then(|n| n.strip_prefix(file_name))
        .and_then(|n| n.strip_prefix(".tmp-"))
    else {
        return false;
    };
    let Some((pid, nonce)) = rest.split_once('-') else {
        return false;
    };
    !pid.is_empty()
        && pid.len() <= 10
        && pid.bytes().all(|b| b.is_ascii_digit())
        && nonce.len() == 16
        && nonce
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A temporary file older than this was left by a write that was interrupted (a write takes
/// milliseconds): it holds live tokens and nobody will rename it any more.
pub(crate) const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the temporary files that interrupted [`write_atomic`]s (a kill between the write and
/// the rename) left beside `path`'s target: only regular files whose name is exactly ours, older
/// than [`STALE_TEMP_AGE`]. Returns how many were removed; failures are logged, never fatal.
pub(crate) fn remove_stale_temps(path: &Path) -> usize {
    remove_temps_older_than(path, STALE_TEMP_AGE)
}

pub(crate) fn remove_temps_older_than(path: &Path, min_age: std::time::Duration) -> usize {
    let (dir, file_name) = dir_and_name(&write_target(path));
    let Ok(entries) = fs::read_dir(&dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| is_temp_name(n, &file_name)) {
            continue;
        }
        // `DirEntry::metadata` does not follow symlinks: only our own regular files go.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let old_enough = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= min_age);
        if !meta.is_file() || !old_enough {
            continue;
        }
        let tmp = entry.path();
        match fs::remove_file(&tmp) {
            Ok(()) => {
                removed += 1;
                tracing::warn!(
                    path = %tmp.display(),
                    "removed a temporary credentials file left by an interrupted write"
                );
            }
            Err(e) => tracing::warn!(
                path = %tmp.display(),
                error = %e,
                "cannot remove a temporary credentials file left by an interrupted write"
            ),
        }
    }
    removed
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Where a manager's credentials live.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    File { kind: SourceKind, path: PathBuf },
    Keychain { service: String },
}

/// The result of reading a source.
#[derive(Debug)]
pub(crate) enum Loaded {
    /// Nothing there (file or item missing).
    Missing,
    /// A valid document without `claudeAiOauth` (e.g. only MCP tokens).
    NoEntry,
    Found {
        root: Map<String, Value>,
        creds: OAuthCreds,
    },
}

impl Source {
    pub(crate) fn info(&self) -> SourceInfo {
        match self {
            Source::File { kind, path } => {
                let what = match kind {
                    SourceKind::CredentialsFile => "credentials file (--credentials-file)",
                    SourceKind::OwnStore => "ccproxy credentials store",
                    SourceKind::ClaudeCode => "Claude Code credentials file",
                    SourceKind::Keychain => "file",
                };
                SourceInfo {
                    kind: *kind,
                    path: Some(path.clone()),
                    description: format!("{what} {}", path.display()),
                }
            }
            Source::Keychain { service } => SourceInfo {
                kind: SourceKind::Keychain,
                path: None,
                description: format!("macOS Keychain item `{service}`"),
            },
        }
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            Source::File { path, .. } => Some(path),
            Source::Keychain { .. } => None,
        }
    }

    /// Reads and parses the source. Invalid content is an error naming the path.
    pub(crate) fn load(&self) -> Result<Loaded, CredentialError> {
        let (bytes, path) = match self {
            Source::File { path, .. } => match read_file(path)? {
                Some(b) => (b, path.clone()),
                None => return Ok(Loaded::Missing),
            },
            Source::Keychain { service } => match keychain::read(service)? {
                Some(b) => (b, PathBuf::from(format!("keychain:{service}"))),
                None => return Ok(Loaded::Missing),
            },
        };
        let doc = parse_document(&bytes).map_err(|reason| match self {
            Source::Keychain { service } => CredentialError::Keychain {
                service: service.clone(),
                reason: format!("the stored credentials are invalid: {reason}"),
            },
            Source::File { .. } => CredentialError::Invalid { path, reason },
        })?;
        Ok(match doc.creds {
            Some(creds) => Loaded::Found {
                root: doc.root,
                creds,
            },
            None => Loaded::NoEntry,
        })
    }

    /// Writes refreshed credentials back: re-reads the source right before writing so keys changed by
    /// someone else in the meantime are kept, patches `claudeAiOauth`, writes atomically (0600).
    /// `fallback` is the last document we read, used when the source is now unreadable (torn).
    /// Does not recreate a source that was removed.
    pub(crate) fn save(
        &self,
        creds: &OAuthCreds,
        fallback: &Map<String, Value>,
    ) -> Result<(), CredentialError> {
        let mut root = match self.load() {
            Ok(Loaded::Found { root, .. }) => root,
            Ok(Loaded::NoEntry) => match self.load_root() {
                Some(r) => r,
                None => fallback.clone(),
            },
            Ok(Loaded::Missing) => {
                return Err(CredentialError::Removed {
                    origin: self.info().description,
                });
            }
            Err(_) => fallback.clone(),
        };
        apply_creds(&mut root, creds);
        let bytes = serialize(&root);
        match self {
            Source::File { path, .. } => write_atomic(path, &bytes, false),
            Source::Keychain { service } => keychain::write(service, &bytes),
        }
    }

    fn load_root(&self) -> Option<Map<String, Value>> {
        let bytes = match self {
            Source::File { path, .. } => read_file(path).ok()??,
            Source::Keychain { service } => keychain::read(service).ok()??,
        };
        parse_document(&bytes).ok().map(|d| d.root)
    }
}

/// Saves credentials obtained by a login into `path`: keeps the other keys of an existing valid
/// document, replaces an invalid one, creates missing directories (0700) and the file (0600).
pub(crate) fn save_login(path: &Path, creds: &OAuthCreds) -> Result<(), CredentialError> {
    remove_stale_temps(path);
    let mut root = match read_file(path) {
        Ok(Some(bytes)) => parse_document(&bytes).map(|d| d.root).unwrap_or_default(),
        _ => Map::new(),
    };
    if creds.subscription_type.is_none() {
        // A new login may be another account: do not keep the previous account's plan.
        if let Some(Value::Object(o)) = root.get_mut(OAUTH_KEY) {
            o.shift_remove("subscriptionType");
        }
    }
    apply_creds(&mut root, creds);
    write_atomic(path, &serialize(&root), true)
}
