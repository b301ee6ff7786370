//! What the nodes of a cluster share besides the log (DESIGN §7): the per-origin inbox
//! buckets, WebSocket tickets and sign-in challenges, so that a quota holds for the cluster
//! as a whole and a ticket or challenge issued by one node is redeemed on any other, once.
//!
//! Every time here is PostgreSQL's clock ([`DB_NOW_MS`]): a bucket refills, and a ticket or
//! challenge expires, by one clock whichever node asks. The statements are PostgreSQL's (a
//! cluster needs it); one node keeps all of this in memory and never calls them.
//!
//! Single use comes from `DELETE … RETURNING`: of two nodes deleting the same row at once,
//! PostgreSQL lets one delete it and answers the other nothing.

use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use super::{Store, StoreError};
use crate::cluster::DB_NOW_MS;

fn pg(sql: String, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn missing(what: &str) -> StoreError {
    StoreError::Db(sea_orm::DbErr::RecordNotFound(format!(
        "{what}: the statement answered no row"
    )))
}

/// What one take from an origin's shared bucket gave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketTake {
    /// Whole tokens granted: 0 when the bucket held fewer than the `need` asked for, else
    /// between `need` and `want`.
    pub granted: u32,
    /// What the bucket holds after the take (fractional: it refills continuously).
    pub tokens: f64,
}

/// A ticket's grant as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketRow {
    pub fid: String,
    pub session_id: String,
    pub created_seq: u64,
}

impl Store {
    /// Takes tokens from `origin`'s shared bucket in one statement: the bucket refills by
    /// `rate_per_minute` for the time since its last take (on the database's clock), capped
    /// at `burst`; if it then holds at least `need` tokens, up to `want` whole tokens are
    /// taken, else none. A bucket not yet in the table starts full.
    ///
    /// One `INSERT … ON CONFLICT DO UPDATE`: PostgreSQL locks the row and computes the new
    /// values from its latest version, so concurrent takes from several nodes serialise and
    /// never grant the same token twice. The grant is stored in `granted` so that
    /// `RETURNING`, which sees only the new row, can answer it.
    pub async fn take_origin_tokens(
        &self,
        origin: &str,
        rate_per_minute: u32,
        burst: u32,
        need: u32,
        want: u32,
    ) -> Result<BucketTake, StoreError> {
        let per_ms = f64::from(rate_per_minute.max(1)) / 60_000.0;
        let burst = f64::from(burst.max(1));
        let need = f64::from(need);
        let want = f64::from(want).max(need);
        let row = self
            .readers()
            .query_one(pg(
                format!(
                    "INSERT INTO origin_buckets AS b (origin, tokens, updated_ms, granted) \
                     VALUES ($1, $3 - LEAST($5, $3), {DB_NOW_MS}, LEAST($5, $3)) \
                     ON CONFLICT (origin) DO UPDATE SET (granted, tokens, updated_ms) = ( \
                       SELECT g.granted, a.available - g.granted, \
                              GREATEST(b.updated_ms, excluded.updated_ms) \
                       FROM (SELECT LEAST($3, b.tokens + $2 * \
                               GREATEST(0, excluded.updated_ms - b.updated_ms)) AS available) a, \
                       LATERAL (SELECT CASE WHEN a.available >= $4 \
                                  THEN LEAST($5, FLOOR(a.available)) ELSE 0 END AS granted) g) \
                     RETURNING granted, tokens"
                ),
                vec![
                    origin.into(),
                    per_ms.into(),
                    burst.into(),
                    need.into(),
                    want.into(),
                ],
            ))
            .await?
            .ok_or_else(|| missing("origin bucket take"))?;
        let granted = row.try_get_by_index::<f64>(0)?;
        let tokens = row.try_get_by_index::<f64>(1)?;
        Ok(BucketTake {
            // Whole and between 0 and `want` by construction.
            granted: granted.max(0.0) as u32,
            tokens,
        })
    }

    /// Puts `tokens` a node took but did not use back into `origin`'s bucket (capped at
    /// `burst`), so that an allowance a node stopped using is not lost to the others.
    pub async fn return_origin_tokens(
        &self,
        origin: &str,
        tokens: u32,
        burst: u32,
    ) -> Result<(), StoreError> {
        if tokens == 0 {
            return Ok(());
        }
        self.readers()
            .execute(pg(
                "UPDATE origin_buckets SET tokens = LEAST($3, tokens + $2) WHERE origin = $1"
                    .into(),
                vec![
                    origin.into(),
                    f64::from(tokens).into(),
                    f64::from(burst.max(1)).into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// Deletes the buckets untouched for `idle` (on the database's clock). A missing bucket
    /// starts full, which a bucket idle that long is for any burst up to `idle` × rate.
    pub async fn forget_idle_origin_buckets(
        &self,
        idle: std::time::Duration,
    ) -> Result<u64, StoreError> {
        Ok(self
            .readers()
            .execute(pg(
                format!("DELETE FROM origin_buckets WHERE updated_ms < {DB_NOW_MS} - $1"),
                vec![ms(idle).into()],
            ))
            .await?
            .rows_affected())
    }

    /// Stores a ticket (by `ticket_hash`, never the ticket) valid for `lifetime`, unless its
    /// session already holds `per_session` live ones; answers whether it was stored.
    pub async fn insert_cluster_ticket(
        &self,
        ticket_hash: &str,
        grant: &TicketRow,
        lifetime: std::time::Duration,
        per_session: u32,
    ) -> Result<bool, StoreError> {
        let inserted = self
            .readers()
            .execute(pg(
                format!(
                    "INSERT INTO cluster_tickets \
                       (ticket, fid, session_id, created_seq, expires_ms) \
                     SELECT $1, $2, $3, $4, {DB_NOW_MS} + $5 \
                     WHERE (SELECT count(*) FROM cluster_tickets \
                            WHERE session_id = $3 AND expires_ms > {DB_NOW_MS}) < $6"
                ),
                vec![
                    ticket_hash.into(),
                    grant.fid.as_str().into(),
                    grant.session_id.as_str().into(),
                    i64::try_from(grant.created_seq).unwrap_or(i64::MAX).into(),
                    ms(lifetime).into(),
                    i64::from(per_session).into(),
                ],
            ))
            .await?
            .rows_affected();
        Ok(inserted == 1)
    }

    /// Redeems the ticket whose hash is `ticket_hash`: deletes it if it is live and answers
    /// its grant. Unknown, used and expired tickets answer `None`.
    pub async fn redeem_cluster_ticket(
        &self,
        ticket_hash: &str,
    ) -> Result<Option<TicketRow>, StoreError> {
        let row = self
            .readers()
            .query_one(pg(
                format!(
                    "DELETE FROM cluster_tickets WHERE ticket = $1 AND expires_ms > {DB_NOW_MS} \
                     RETURNING fid, session_id, created_seq"
                ),
                vec![ticket_hash.into()],
            ))
            .await?;
        row.map(|row| {
            Ok(TicketRow {
                fid: row.try_get_by_index(0)?,
                session_id: row.try_get_by_index(1)?,
                created_seq: u64::try_from(row.try_get_by_index::<i64>(2)?).unwrap_or(0),
            })
        })
        .transpose()
    }

    /// Deletes the tickets of an ended session.
    pub async fn delete_session_tickets(&self, session_id: &str) -> Result<u64, StoreError> {
        Ok(self
            .readers()
            .execute(pg(
                "DELETE FROM cluster_tickets WHERE session_id = $1".into(),
                vec![session_id.into()],
            ))
            .await?
            .rows_affected())
    }

    /// Deletes the expired tickets (never redeemable; the tidy-up keeps the table small).
    pub async fn delete_expired_tickets(&self) -> Result<u64, StoreError> {
        Ok(self
            .readers()
            .execute(pg(
                format!("DELETE FROM cluster_tickets WHERE expires_ms <= {DB_NOW_MS}"),
                vec![],
            ))
            .await?
            .rows_affected())
    }

    /// Stores a challenge valid for `lifetime`; answers its expiry (ms, the database's
    /// clock).
    pub async fn insert_cluster_challenge(
        &self,
        challenge: &str,
        lifetime: std::time::Duration,
    ) -> Result<i64, StoreError> {
        let row = self
            .readers()
            .query_one(pg(
                format!(
                    "INSERT INTO cluster_challenges (challenge, expires_ms) \
                     VALUES ($1, {DB_NOW_MS} + $2) RETURNING expires_ms"
                ),
                vec![challenge.into(), ms(lifetime).into()],
            ))
            .await?
            .ok_or_else(|| missing("challenge insert"))?;
        Ok(row.try_get_by_index::<i64>(0)?)
    }

    /// Challenges outstanding (unexpired) in the cluster.
    pub async fn count_cluster_challenges(&self) -> Result<u64, StoreError> {
        let row = self
            .readers()
            .query_one(pg(
                format!("SELECT count(*) FROM cluster_challenges WHERE expires_ms > {DB_NOW_MS}"),
                vec![],
            ))
            .await?
            .ok_or_else(|| missing("challenge count"))?;
        Ok(u64::try_from(row.try_get_by_index::<i64>(0)?).unwrap_or(0))
    }

    /// Consumes `challenge`: `None` if unknown or used, else whether it was still live (an
    /// expired one is consumed too).
    pub async fn redeem_cluster_challenge(
        &self,
        challenge: &str,
    ) -> Result<Option<bool>, StoreError> {
        let row = self
            .readers()
            .query_one(pg(
                format!(
                    "DELETE FROM cluster_challenges WHERE challenge = $1 \
                     RETURNING expires_ms > {DB_NOW_MS}"
                ),
                vec![challenge.into()],
            ))
            .await?;
        row.map(|row| Ok(row.try_get_by_index::<bool>(0)?))
            .transpose()
    }

    /// Deletes the expired challenges.
    pub async fn delete_expired_challenges(&self) -> Result<u64, StoreError> {
        Ok(self
            .readers()
            .execute(pg(
                format!("DELETE FROM cluster_challenges WHERE expires_ms <= {DB_NOW_MS}"),
                vec![],
            ))
            .await?
            .rows_affected())
    }
}
