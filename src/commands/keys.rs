//! `ccproxy keys`: create, list, revoke and rotate client keys in the usage database.
//! A running server picks the changes up within a second (`keys::RELOAD_EVERY`).

use std::io::Write as _;

use anyhow::Context as _;

use crate::cli::{KeyCreateArgs, KeysCommand, KeysFormat};
use crate::keys::store::{self, KeyDb};
use crate::keys::{KeyRequest, StrOrList};
use crate::util::time::now_ms;

/// The key request of `keys create`'s flags.
pub fn request_of(a: KeyCreateArgs) -> KeyRequest {
    KeyRequest {
        name: a.name,
        models: a.models.map(StrOrList::Str),
        modes: a.modes.map(StrOrList::Str),
        rpm: a.rpm,
        tpm: a.tpm,
        max_concurrent: a.max_concurrent,
        budget_usd: a.budget,
        period: a.period,
        expires: a.expires,
    }
}

/// Runs one `keys` action on the store `db`; returns the exit code. Blocking (PostgreSQL's
/// client): call it off the async runtime.
pub fn run(action: KeysCommand, db: &crate::db::Database) -> anyhow::Result<u8> {
    let now = now_ms();
    let link = crate::db::Link::new();
    let open = || KeyDb::open_db(db, &link);
    let mut out = String::new();
    match action {
        KeysCommand::Create(args) => {
            let req = request_of(args);
            let limits = req.limits(now).map_err(anyhow::Error::msg)?;
            let mut kdb = open()?;
            let secret = kdb.create(&req.name, &limits, now)?;
            out.push_str(&format!(
                "created client key {:?}; it is shown only this once, store it now:\n{secret}\n",
                req.name
            ));
        }
        KeysCommand::List { format } => {
            if db.sqlite_path().is_some_and(|p| !p.exists()) {
                match format {
                    KeysFormat::Json => out.push_str("[]\n"),
                    KeysFormat::Table => out.push_str("no client keys (no usage database yet)\n"),
                }
            } else {
                let mut kdb = open()?;
                let keys = kdb.list(now)?;
                match format {
                    KeysFormat::Json => {
                        out =
                            serde_json::to_string_pretty(&keys).context("serializing the keys")?;
                        out.push('\n');
                    }
                    KeysFormat::Table if keys.is_empty() => {
                        out.push_str("no client keys; create one with `ccproxy keys create NAME`\n")
                    }
                    KeysFormat::Table => out = store::render_table(&keys, now),
                }
            }
        }
        KeysCommand::Revoke { name } => {
            open()?.revoke(&name, now)?;
            out.push_str(&format!("revoked client key {name:?}\n"));
        }
        KeysCommand::Rotate { name } => {
            let secret = open()?.rotate(&name)?;
            out.push_str(&format!(
                "rotated client key {name:?}; the old key no longer works. The new one, shown only this once:\n{secret}\n"
            ));
        }
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e).context("writing the output"),
    }
}
