//! The `client_keys` table in PostgreSQL (`database_url = "postgres://…"`), shared by replicas.
//! Every change is announced on the [`KEYS_CHANNEL`] notification channel in its transaction,
//! so every replica's listener reloads at once (the periodic reload is the safety net).

use postgres::Client;
use postgres::types::ToSql;

use super::{Budget, KeyRecord, Limits, Period, parse_mode};
use crate::db::pg::KEYS_CHANNEL;

pub(super) fn all(c: &mut Client) -> Result<Vec<KeyRecord>, postgres::Error> {
    let rows = c.query(
        "SELECT name, digest, prefix, models, modes, rpm, tpm, max_concurrent, budget_usd,
            period, expires_at_ms, created_at_ms, revoked_at_ms
         FROM client_keys ORDER BY name",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|row| {
            let digest: Vec<u8> = row.get(1);
            let models: String = row.get(3);
            let modes: String = row.get(4);
            let budget_usd: Option<f64> = row.get(8);
            let period: Option<String> = row.get(9);
            KeyRecord {
                name: row.get(0),
                digest: <[u8; 32]>::try_from(digest.as_slice()).unwrap_or([0; 32]),
                prefix: row.get(2),
                limits: Limits {
                    models: models
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    modes: modes.split(',').filter_map(parse_mode).collect(),
                    rpm: row
                        .get::<_, Option<i64>>(5)
                        .and_then(|n| u32::try_from(n).ok()),
                    tpm: row
                        .get::<_, Option<i64>>(6)
                        .and_then(|n| u64::try_from(n).ok()),
                    max_concurrent: row
                        .get::<_, Option<i64>>(7)
                        .and_then(|n| u32::try_from(n).ok()),
                    budget: budget_usd.map(|usd| Budget {
                        usd,
                        period: period
                            .as_deref()
                            .and_then(Period::parse)
                            .unwrap_or(Period::Month),
                    }),
                    expires_at_ms: row.get(10),
                },
                created_at_ms: row.get(11),
                revoked_at_ms: row.get(12),
            }
        })
        .collect())
}

pub(super) fn state(c: &mut Client, name: &str) -> Result<Option<Option<i64>>, postgres::Error> {
    Ok(c.query_opt(
        "SELECT revoked_at_ms FROM client_keys WHERE name = $1",
        &[&name],
    )?
    .map(|r| r.get(0)))
}

/// A key's limits as the `client_keys` columns hold them.
struct LimitColumns {
    models: String,
    modes: String,
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_concurrent: Option<i64>,
    budget: Option<f64>,
    period: Option<&'static str>,
}

impl LimitColumns {
    fn of(l: &Limits) -> LimitColumns {
        LimitColumns {
            models: l.models.join(","),
            modes: super::store::join_modes(l),
            rpm: l.rpm.map(i64::from),
            tpm: l.tpm.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
            max_concurrent: l.max_concurrent.map(i64::from),
            budget: l.budget.map(|b| b.usd),
            period: l.budget.map(|b| b.period.name()),
        }
    }
}

/// Inserts (or replaces a revoked) key row and announces it.
pub(super) fn create(
    c: &mut Client,
    name: &str,
    digest: &[u8; 32],
    prefix: &str,
    limits: &Limits,
    now: i64,
) -> Result<(), postgres::Error> {
    let cols = LimitColumns::of(limits);
    let digest = digest.as_slice();
    let params: [&(dyn ToSql + Sync); 12] = [
        &name,
        &digest,
        &prefix,
        &cols.models,
        &cols.modes,
        &cols.rpm,
        &cols.tpm,
        &cols.max_concurrent,
        &cols.budget,
        &cols.period,
        &limits.expires_at_ms,
        &now,
    ];
    let mut tx = c.transaction()?;
    tx.execute(
        "INSERT INTO client_keys (name, digest, prefix, models, modes, rpm, tpm, max_concurrent,
            budget_usd, period, expires_at_ms, created_at_ms, revoked_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL)
         ON CONFLICT (name) DO UPDATE SET digest = EXCLUDED.digest, prefix = EXCLUDED.prefix,
            models = EXCLUDED.models, modes = EXCLUDED.modes, rpm = EXCLUDED.rpm,
            tpm = EXCLUDED.tpm, max_concurrent = EXCLUDED.max_concurrent,
            budget_usd = EXCLUDED.budget_usd, period = EXCLUDED.period,
            expires_at_ms = EXCLUDED.expires_at_ms, created_at_ms = EXCLUDED.created_at_ms,
            revoked_at_ms = NULL",
        &params,
    )?;
    notify(&mut tx, name)?;
    tx.commit()
}

pub(super) fn revoke(c: &mut Client, name: &str, now: i64) -> Result<(), postgres::Error> {
    let mut tx = c.transaction()?;
    tx.execute(
        "UPDATE client_keys SET revoked_at_ms = $2 WHERE name = $1 AND revoked_at_ms IS NULL",
        &[&name, &now],
    )?;
    notify(&mut tx, name)?;
    tx.commit()
}

pub(super) fn rotate(
    c: &mut Client,
    name: &str,
    digest: &[u8; 32],
    prefix: &str,
) -> Result<(), postgres::Error> {
    let mut tx = c.transaction()?;
    tx.execute(
        "UPDATE client_keys SET digest = $2, prefix = $3 WHERE name = $1",
        &[&name, &digest.as_slice(), &prefix],
    )?;
    notify(&mut tx, name)?;
    tx.commit()
}

fn notify(tx: &mut postgres::Transaction<'_>, name: &str) -> Result<(), postgres::Error> {
    tx.execute("SELECT pg_notify($1, $2)", &[&KEYS_CHANNEL, &name])
        .map(|_| ())
}

pub(super) fn rows_of(
    c: &mut Client,
    name: &str,
    since_ms: i64,
) -> Result<Vec<(i64, u64, Option<f64>)>, postgres::Error> {
    let rows = c.query(
        "SELECT ts_ms, input_tokens + output_tokens + cache_read_tokens + cache_write_tokens,
            cost_usd
         FROM requests WHERE client_key = $1 AND ts_ms >= $2
            AND (upstream_status IS NOT NULL OR status < 400)
         ORDER BY ts_ms",
        &[&name, &since_ms],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0),
                u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                r.get::<_, Option<f64>>(2),
            )
        })
        .collect())
}

pub(super) fn last_used(c: &mut Client, name: &str) -> Result<Option<i64>, postgres::Error> {
    c.query_one(
        "SELECT MAX(ts_ms) FROM requests WHERE client_key = $1",
        &[&name],
    )
    .map(|r| r.get(0))
}

pub(super) fn spend(
    c: &mut Client,
    name: &str,
    since_ms: i64,
) -> Result<(f64, i64), postgres::Error> {
    c.query_one(
        "SELECT COALESCE(SUM(cost_usd), 0)::DOUBLE PRECISION, COUNT(*) FROM requests
         WHERE client_key = $1 AND ts_ms >= $2",
        &[&name, &since_ms],
    )
    .map(|r| (r.get(0), r.get(1)))
}

/// Copies `r` (digest, prefix, limits, dates) as it is; a key of that name already there wins.
/// Whether it was inserted.
pub fn import(c: &mut Client, r: &KeyRecord) -> Result<bool, postgres::Error> {
    let cols = LimitColumns::of(&r.limits);
    let digest = r.digest.as_slice();
    let params: [&(dyn ToSql + Sync); 13] = [
        &r.name,
        &digest,
        &r.prefix,
        &cols.models,
        &cols.modes,
        &cols.rpm,
        &cols.tpm,
        &cols.max_concurrent,
        &cols.budget,
        &cols.period,
        &r.limits.expires_at_ms,
        &r.created_at_ms,
        &r.revoked_at_ms,
    ];
    let n = c.execute(
        "INSERT INTO client_keys (name, digest, prefix, models, modes, rpm, tpm, max_concurrent,
            budget_usd, period, expires_at_ms, created_at_ms, revoked_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT DO NOTHING",
        &params,
    )?;
    if n > 0 {
        c.execute("SELECT pg_notify($1, $2)", &[&KEYS_CHANNEL, &r.name])?;
    }
    Ok(n > 0)
}

/// A replica's spend lease on one key's budget for one period, after [`lease`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    /// What this replica may spend in the period (granted so far, in total).
    pub granted: f64,
    /// What the fleet has committed: every replica's lease (or its spend, when larger), or
    /// the usage rows' total, whichever is larger.
    pub committed: f64,
    /// What the fleet's usage rows say the key has spent in the period.
    pub spent: f64,
}

/// A replica whose lease was not renewed for this long is gone: what it did not spend goes
/// back to the budget.
pub const DEAD_LEASE_MS: i64 = 30_000;

/// Reports this replica's spend `used` under key `name`'s lease for the period starting at
/// `period_start`, and tops the lease up by at most `lease` (never past `budget`, counting every
/// replica's lease) when less than half a lease is left; with `lease` 0 (the key is idle on this
/// replica), gives back what it did not spend. Serialised per key by an advisory lock.
#[allow(clippy::too_many_arguments)]
pub fn lease(
    c: &mut Client,
    name: &str,
    period_start: i64,
    replica: &str,
    budget: f64,
    used: f64,
    lease: f64,
    now: i64,
) -> Result<Lease, postgres::Error> {
    let mut tx = c.transaction()?;
    let key = crate::db::pg::lock_key(&format!("budget:{name}"));
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])?;
    tx.execute(
        "INSERT INTO budget_leases (name, period_start, replica, granted, used, updated_ms)
         VALUES ($1, $2, $3, 0, $4, $5)
         ON CONFLICT (name, period_start, replica) DO UPDATE
            SET used = GREATEST(budget_leases.used, EXCLUDED.used), updated_ms = EXCLUDED.updated_ms",
        &[&name, &period_start, &replica, &used, &now],
    )?;
    tx.execute(
        "UPDATE budget_leases SET granted = used
         WHERE name = $1 AND period_start = $2 AND updated_ms < $3 AND granted > used",
        &[&name, &period_start, &(now - DEAD_LEASE_MS)],
    )?;
    if lease <= 0.0 {
        // This replica wants no lease (the key is idle here): what it did not spend goes back.
        tx.execute(
            "UPDATE budget_leases SET granted = used
             WHERE name = $1 AND period_start = $2 AND replica = $3 AND granted > used",
            &[&name, &period_start, &replica],
        )?;
    }
    let leased: f64 = tx
        .query_one(
            "SELECT COALESCE(SUM(GREATEST(granted, used)), 0)::DOUBLE PRECISION FROM budget_leases
             WHERE name = $1 AND period_start = $2",
            &[&name, &period_start],
        )?
        .get(0);
    let rows: f64 = tx
        .query_one(
            "SELECT COALESCE(SUM(cost_usd), 0)::DOUBLE PRECISION FROM requests
             WHERE client_key = $1 AND ts_ms >= $2",
            &[&name, &period_start],
        )?
        .get(0);
    let mut granted: f64 = tx
        .query_one(
            "SELECT granted FROM budget_leases WHERE name = $1 AND period_start = $2 AND replica = $3",
            &[&name, &period_start, &replica],
        )?
        .get(0);
    let mut committed = leased.max(rows);
    let left = granted - used;
    let remaining = budget - committed;
    if left < lease / 2.0 && remaining > 0.0 {
        // Grow the lease so that `lease` is left, within what remains of the budget.
        let top = (lease - left.max(0.0)).min(remaining);
        let next = granted.max(used) + top;
        tx.execute(
            "UPDATE budget_leases SET granted = $4
             WHERE name = $1 AND period_start = $2 AND replica = $3",
            &[&name, &period_start, &replica, &next],
        )?;
        committed += next - granted.max(used);
        granted = next;
    }
    tx.commit()?;
    Ok(Lease {
        granted,
        committed,
        spent: rows,
    })
}
