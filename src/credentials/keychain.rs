//! The macOS Keychain item Claude Code keeps its credentials in (generic password, service
//! `Claude Code-credentials`, account = the user name), through the `security` tool.
//!
//! Only consulted on macOS (see `OAuthManager::discover`), but compiled everywhere so its pure parts
//! are tested on every platform. Refreshed tokens are written back (refresh tokens rotate: not writing
//! them back would log Claude Code out). The secret is passed to `security -i` on stdin, never on the
//! command line where other processes could see it.

use std::io::Write;
use std::process::{Command, Stdio};

use super::CredentialError;

/// The Keychain service name Claude Code uses.
pub const SERVICE: &str = "Claude Code-credentials";

/// `security` exits with this status when the item does not exist.
const ERR_ITEM_NOT_FOUND: i32 = 44;

fn kerr(service: &str, reason: impl Into<String>) -> CredentialError {
    CredentialError::Keychain {
        service: service.to_owned(),
        reason: reason.into(),
    }
}

/// Reads the item's password (the JSON document); `Ok(None)` when there is no such item.
pub(crate) fn read(service: &str) -> Result<Option<Vec<u8>>, CredentialError> {
    let out = Command::new("security")
        .args(["find-generic-password", "-s", service, "-w"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| kerr(service, format!("cannot run `security`: {e}")))?;
    if !out.status.success() {
        if out.status.code() == Some(ERR_ITEM_NOT_FOUND) {
            return Ok(None);
        }
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(kerr(
            service,
            format!(
                "`security find-generic-password` failed: {}",
                first_line(&msg)
            ),
        ));
    }
    Ok(Some(decode_password_output(&out.stdout)))
}

/// Replaces the item's password, keeping its account.
pub(crate) fn write(service: &str, password: &[u8]) -> Result<(), CredentialError> {
    let account = read_account(service)
        .or_else(|| std::env::var("USER").ok())
        .ok_or_else(|| kerr(service, "cannot determine the Keychain account name"))?;
    let command = add_command(service, &account, password)
        .ok_or_else(|| kerr(service, "the account or service name contains quotes"))?;
    let mut child = Command::new("security")
        .arg("-i")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| kerr(service, format!("cannot run `security`: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(command.as_bytes())
            .map_err(|e| kerr(service, format!("cannot talk to `security`: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| kerr(service, format!("`security` failed: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() {
        return Err(kerr(
            service,
            format!(
                "`security add-generic-password` failed: {}",
                first_line(&stderr)
            ),
        ));
    }
    Ok(())
}

fn read_account(service: &str) -> Option<String> {
    let out = Command::new("security")
        .args(["find-generic-password", "-s", service])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then_some(())?;
    parse_account(&String::from_utf8_lossy(&out.stdout))
}

/// The interactive-mode command that stores `password` (hex-encoded) for `account`/`service`.
pub(crate) fn add_command(service: &str, account: &str, password: &[u8]) -> Option<String> {
    let bad = |s: &str| s.contains(['"', '\\', '\n', '\r']);
    if bad(service) || bad(account) {
        return None;
    }
    Some(format!(
        "add-generic-password -U -a \"{account}\" -s \"{service}\" -X \"{}\"\n",
        hex(password)
    ))
}

/// Extracts the account from `security find-generic-password` attribute output
/// (`    "acct"<blob>="name"`).
pub(crate) fn parse_account(attributes: &str) -> Option<String> {
    attributes.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("\"acct\"<blob>=\"")?;
        let name = rest.strip_suffix('"')?;
        (!name.is_empty()).then(|| name.to_owned())
    })
}

/// `security -w` prints the password as text, or as hex when it is not printable.
pub(crate) fn decode_password_output(stdout: &[u8]) -> Vec<u8> {
    let trimmed = stdout.trim_ascii();
    if trimmed.first() != Some(&b'{')
        && trimmed.len().is_multiple_of(2)
        && !trimmed.is_empty()
        && trimmed.iter().all(u8::is_ascii_hexdigit)
        && let Some(bytes) = unhex(trimmed)
    {
        return bytes;
    }
    trimmed.to_vec()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    crate::util::fmt::push_hex(&mut s, bytes);
    s
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    s.chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(*pair.get(1)?).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no details")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_account_from_attributes() {
        let out = "keychain: \"/Users/me/Library/Keychains/login.keychain-db\"\nclass: \"genp\"\nattributes:\n    0x00000007 <blob>=\"Claude Code-credentials\"\n    \"acct\"<blob>=\"me\"\n    \"svce\"<blob>=\"Claude Code-credentials\"\n";
        assert_eq!(parse_account(out).as_deref(), Some("me"));
        assert_eq!(parse_account("nothing"), None);
    }

    #[test]
    fn decodes_plain_and_hex_passwords() {
        assert_eq!(decode_password_output(b"{\"a\":1}\n"), b"{\"a\":1}");
        assert_eq!(
            decode_password_output(hex(b"{\"a\":1}").as_bytes()),
            b"{\"a\":1}"
        );
    }

    #[test]
    fn add_command_hex_encodes_and_refuses_quotes() {
        let cmd = add_command(SERVICE, "me", b"{}").expect("command");
        assert_eq!(
            cmd,
            "add-generic-password -U -a \"me\" -s \"Claude Code-credentials\" -X \"7b7d\"\n"
        );
        assert!(add_command(SERVICE, "m\"e", b"{}").is_none());
    }
}
