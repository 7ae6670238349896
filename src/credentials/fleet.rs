//! One OAuth refresh for a fleet of replicas sharing PostgreSQL.
//!
//! Every refresh attempt of a subscription runs under a PostgreSQL advisory lock named after
//! the credential, so one replica at a time refreshes it. With `database_secret` set, the tokens
//! a replica obtains are written to `oauth_tokens`, sealed (`db::seal`: XChaCha20-Poly1305, the
//! key derived from the secret), and a replica that takes the lock next reads them before
//! deciding to refresh: it adopts them (and writes them to its own credentials file) instead of
//! sending its refresh token, which the first refresh rotated. So N replicas at expiry cause one
//! refresh upstream, and a rotated refresh token is never sent again by the fleet.
//!
//! Without `database_secret` no token is written to the database: the lock still serialises the
//! attempts, and each replica re-reads its credentials file under it, which is enough when the
//! replicas share the file (one host, or a shared volume) and not otherwise.
//!
//! A database that cannot be reached does not stop a refresh: the attempt runs unlocked (the
//! replica's own single flight still holds), and the failure is reported.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::OAuthCreds;
use super::{AccessToken, Secret};
use crate::db::seal::SealKey;
use crate::db::{Link, PgUrl};

/// How long a replica waits for another's refresh (the lock) before refreshing unlocked.
const LOCK_WAIT: Duration = Duration::from_secs(45);

/// The shared side of one subscription credential.
pub struct Fleet {
    url: PgUrl,
    name: String,
    seal: Option<SealKey>,
    link: Arc<Link>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("name", &self.name)
            .field("sealed_tokens", &self.seal.is_some())
            .finish_non_exhaustive()
    }
}

/// Holds the credential's advisory lock (the session's); released when dropped (the
/// connection closes).
pub struct FleetLock {
    client: tokio_postgres::Client,
}

/// What is sealed in `oauth_tokens`.
#[derive(Serialize, Deserialize)]
struct Sealed {
    access_token: String,
    refresh_token: Option<String>,
    expires_at_ms: Option<i64>,
    scopes: Vec<String>,
    subscription_type: Option<String>,
}

impl Fleet {
    /// `secret`: `database_secret` (tokens are shared only with it).
    pub fn new(url: PgUrl, name: &str, secret: Option<&str>, link: Arc<Link>) -> Fleet {
        Fleet {
            url,
            name: name.to_owned(),
            seal: secret.map(SealKey::derive),
            link,
        }
    }

    /// Waits for the credential's lock; `None` when the database cannot be used (then the
    /// caller refreshes unlocked).
    pub(crate) async fn lock(&self) -> Option<FleetLock> {
        let key = crate::db::pg::lock_key(&format!("oauth:{}", self.name));
        let attempt = async {
            let client = crate::db::pg::connect_async(&self.url).await?;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&key])
                .await
                .map_err(crate::db::pg::DbError::of(&self.url))?;
            Ok::<_, crate::db::pg::DbError>(client)
        };
        match tokio::time::timeout(LOCK_WAIT, attempt).await {
            Ok(Ok(client)) => {
                self.link.ok();
                Some(FleetLock { client })
            }
            Ok(Err(e)) => {
                tracing::warn!(credential = %self.name, error = %e, "cannot take the fleet's refresh lock; refreshing without it");
                self.link.failed(&e.to_string());
                None
            }
            Err(_) => {
                tracing::warn!(credential = %self.name, "waited too long for the fleet's refresh lock; refreshing without it");
                None
            }
        }
    }

    /// The tokens another replica wrote, if any (and if they open with our secret).
    pub(crate) async fn load(&self, lock: &FleetLock) -> Option<OAuthCreds> {
        let seal = self.seal.as_ref()?;
        let row = lock
            .client
            .query_opt(
                "SELECT sealed FROM oauth_tokens WHERE name = $1",
                &[&self.name],
            )
            .await
            .ok()??;
        let sealed: Vec<u8> = row.get(0);
        let Some(plain) = seal.open(&self.name, &sealed) else {
            tracing::warn!(credential = %self.name, "the shared OAuth tokens do not open with this replica's database_secret; ignoring them");
            return None;
        };
        let s: Sealed = serde_json::from_slice(&plain).ok()?;
        Some(OAuthCreds {
            access_token: AccessToken::new(s.access_token),
            refresh_token: s.refresh_token.map(Secret),
            expires_at_ms: s.expires_at_ms,
            scopes: s.scopes,
            subscription_type: s.subscription_type,
        })
    }

    /// Shares tokens this replica obtained (sealed); nothing without a secret.
    pub(crate) async fn store(&self, lock: &FleetLock, creds: &OAuthCreds) {
        let Some(seal) = &self.seal else { return };
        let s = Sealed {
            access_token: creds.access_token.secret().to_owned(),
            refresh_token: creds.refresh_token.as_ref().map(|r| r.expose().to_owned()),
            expires_at_ms: creds.expires_at_ms,
            scopes: creds.scopes.clone(),
            subscription_type: creds.subscription_type.clone(),
        };
        let Ok(plain) = serde_json::to_vec(&s) else {
            return;
        };
        let sealed = seal.seal(&self.name, &plain);
        let now = crate::util::time::now_ms();
        let r = lock
            .client
            .execute(
                "INSERT INTO oauth_tokens (name, sealed, expires_at_ms, version, updated_ms)
                 VALUES ($1, $2, $3, 1, $4)
                 ON CONFLICT (name) DO UPDATE SET sealed = EXCLUDED.sealed,
                    expires_at_ms = EXCLUDED.expires_at_ms,
                    version = oauth_tokens.version + 1, updated_ms = EXCLUDED.updated_ms",
                &[&self.name, &sealed, &creds.expires_at_ms, &now],
            )
            .await;
        if let Err(e) = r {
            let e = crate::db::pg::DbError::of(&self.url)(e);
            tracing::error!(credential = %self.name, error = %e, "could not share the refreshed tokens; other replicas will refresh on their own");
            self.link.failed(&e.to_string());
        }
    }
}

/// Shares the pool's credential state with the other replicas, once: reads every replica's
/// `credential_state`, adopts longer cooldowns and holds and newer unified limits, then writes
/// back what this replica knows when it differs from the row. Blocking (a store thread).
pub fn sync_state(conn: &mut crate::db::pg::Conn, pool: &super::Pool, now_secs: u64) {
    let rows = conn.with(|c| {
        c.query("SELECT name, unified FROM credential_state", &[])
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1)))
                    .collect::<Vec<_>>()
            })
    });
    let Ok(rows) = rows else { return };
    for m in pool.members() {
        let remote = rows
            .iter()
            .find(|(n, _)| *n == m.name)
            .and_then(|(_, j)| j.as_deref());
        if let Some(shared) =
            remote.and_then(|j| serde_json::from_str::<super::pool::SharedHealth>(j).ok())
        {
            m.adopt_shared(shared);
        }
        let local = m.shareable(now_secs);
        let Ok(json) = serde_json::to_string(&local) else {
            continue;
        };
        if remote == Some(json.as_str()) || (remote.is_none() && local == Default::default()) {
            continue;
        }
        let until = local
            .cooling
            .iter()
            .chain(local.extra_usage.iter())
            .map(|(u, _)| i64::try_from(*u).unwrap_or(i64::MAX).saturating_mul(1000))
            .max();
        let now_ms = crate::util::time::now_ms();
        let _ = conn.with(|c| {
            c.execute(
                "INSERT INTO credential_state (name, cooldown_until_ms, unified, updated_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET cooldown_until_ms = EXCLUDED.cooldown_until_ms,
                    unified = EXCLUDED.unified, updated_ms = EXCLUDED.updated_ms",
                &[&m.name, &until, &json, &now_ms],
            )
        });
    }
}
