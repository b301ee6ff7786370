//! Delivery leases (DESIGN §7, "Outbound delivery"): which node of a cluster delivers to which
//! destination, and the writes of a destination's progress fenced by holding its lease.
//!
//! A row of `delivery_leases` per destination: `node_id` holds it until `until_ms`, judged on
//! PostgreSQL's clock ([`DB_NOW_MS`]) so nodes whose clocks differ agree. A free row has
//! `node_id` NULL (never taken, or released); an expired one still names the node that let
//! it lapse, for the operator. The statements here are PostgreSQL's (a cluster needs it);
//! only [`delivery_leases`] is also read on SQLite, where the table stays empty.
//!
//! The rule every statement keeps: a destination's cursor and dead letters are written only
//! by the node holding a valid lease on it, checked in the same statement as the write. A
//! node that lost its lease (paused past `until_ms`, cut off, slow) cannot move a cursor its
//! successor has started from; at worst the successor resends what the loser had delivered,
//! which the receiver's dedup on `seq:<seq>` event ids absorbs (at least once).

use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use super::{Store, StoreError};
use crate::cluster::DB_NOW_MS;

/// Every destination's lease: `(destination, holder, until_ms)`, sorted by destination. The
/// holder is `None` for a free lease; `until_ms` is PostgreSQL's clock in ms (a lease whose
/// `until_ms` is in the past is free to take, whoever it names). Empty on one node.
pub async fn delivery_leases(
    store: &Store,
) -> Result<Vec<(String, Option<String>, i64)>, StoreError> {
    let db = store.readers();
    let rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT destination, node_id, until_ms FROM delivery_leases ORDER BY destination",
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get_by_index::<String>(0)?,
                row.try_get_by_index::<Option<String>>(1)?,
                row.try_get_by_index::<i64>(2)?,
            ))
        })
        .collect()
}

/// Who holds each destination's lease now, on the database's clock: `(destination, holder)`
/// sorted by destination, the holder `None` when the lease is free (never taken, released,
/// or expired, whoever it still names). PostgreSQL only (a cluster node's admin view).
pub async fn delivery_lease_holders(
    store: &Store,
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    let rows = store
        .readers()
        .query_all(pg(
            format!(
                "SELECT destination, \
                 CASE WHEN until_ms > {DB_NOW_MS} THEN node_id END \
                 FROM delivery_leases ORDER BY destination"
            ),
            Vec::new(),
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get_by_index::<String>(0)?,
                row.try_get_by_index::<Option<String>>(1)?,
            ))
        })
        .collect()
}

/// How the cluster stands, for a node's fair share of the leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseCensus {
    /// Lease rows: every destination some node has known.
    pub destinations: u64,
    /// Live nodes, this one included (whether or not its `cluster_nodes` row exists yet).
    pub nodes: u64,
}

impl LeaseCensus {
    /// ceil(destinations / nodes): with every node at or under it, every lease has room, so
    /// the spread is stable once nodes agree on the census.
    pub fn fair_share(self) -> usize {
        usize::try_from(self.destinations.div_ceil(self.nodes.max(1))).unwrap_or(usize::MAX)
    }
}

fn pg(sql: String, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// A list of names as one JSON parameter, unpacked in SQL with `jsonb_array_elements_text`
/// (the driver is built without PostgreSQL array parameters).
fn names(list: &[String]) -> Value {
    Value::String(Some(Box::new(
        serde_json::to_string(list).unwrap_or_else(|_| "[]".into()),
    )))
}

fn ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn destinations(rows: Vec<sea_orm::QueryResult>) -> Result<Vec<String>, StoreError> {
    rows.iter()
        .map(|row| Ok(row.try_get_by_index::<String>(0)?))
        .collect()
}

impl Store {
    /// Adds a free lease row for each of `list` that has none (another node may have added
    /// it first: that is fine, the row is the same).
    pub async fn register_delivery_leases(&self, list: &[String]) -> Result<(), StoreError> {
        if list.is_empty() {
            return Ok(());
        }
        self.readers()
            .execute(pg(
                "INSERT INTO delivery_leases (destination, node_id, until_ms) \
                 SELECT d, NULL, 0 FROM jsonb_array_elements_text($1::jsonb) AS t(d) \
                 ON CONFLICT (destination) DO NOTHING"
                    .into(),
                vec![names(list)],
            ))
            .await?;
        Ok(())
    }

    /// Extends by `ttl` the leases of `held` that `node` still validly holds; answers those.
    /// A lease of `held` not answered is lost (expired, or taken by another node after it
    /// expired): an expired lease is never renewed, because its cursor writes were already
    /// being refused and another node may be starting from its cursor.
    pub async fn renew_delivery_leases(
        &self,
        node: &str,
        ttl: std::time::Duration,
        held: &[String],
    ) -> Result<Vec<String>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .readers()
            .query_all(pg(
                format!(
                    "UPDATE delivery_leases SET until_ms = {DB_NOW_MS} + $2 \
                     WHERE node_id = $1 AND until_ms > {DB_NOW_MS} \
                     AND destination = ANY(ARRAY(SELECT jsonb_array_elements_text($3::jsonb))) \
                     RETURNING destination"
                ),
                vec![node.into(), ms(ttl).into(), names(held)],
            ))
            .await?;
        destinations(rows)
    }

    /// The lease rows and the live nodes: those other than `node` seen within `window` (on
    /// the database's clock) and not marked stopped (a graceful stop marks its node at once,
    /// so the others' shares grow without waiting for its heartbeat to age), plus `node`
    /// itself.
    pub async fn delivery_lease_census(
        &self,
        node: &str,
        window: std::time::Duration,
    ) -> Result<LeaseCensus, StoreError> {
        let row = self
            .readers()
            .query_one(pg(
                format!(
                    "SELECT (SELECT count(*) FROM delivery_leases), \
                     (SELECT count(*) FROM cluster_nodes \
                      WHERE node_id <> $1 AND role <> 'stopped' \
                      AND seen_ms > {DB_NOW_MS} - $2)"
                ),
                vec![node.into(), ms(window).into()],
            ))
            .await?
            .ok_or_else(|| StoreError::Db(sea_orm::DbErr::RecordNotFound("census".into())))?;
        let destinations = row.try_get_by_index::<i64>(0)?;
        let others = row.try_get_by_index::<i64>(1)?;
        Ok(LeaseCensus {
            destinations: u64::try_from(destinations).unwrap_or(0),
            nodes: u64::try_from(others).unwrap_or(0) + 1,
        })
    }

    /// Takes up to `limit` free or expired leases for `node`, for `ttl`; answers the ones
    /// taken. The rows are chosen and locked with `FOR UPDATE SKIP LOCKED` and updated in the
    /// same statement (one transaction): two nodes claiming at once take different rows, and
    /// neither waits for the other.
    pub async fn claim_delivery_leases(
        &self,
        node: &str,
        ttl: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .readers()
            .query_all(pg(
                format!(
                    "UPDATE delivery_leases SET node_id = $1, until_ms = {DB_NOW_MS} + $2 \
                     WHERE destination IN ( \
                       SELECT destination FROM delivery_leases \
                       WHERE node_id IS NULL OR until_ms < {DB_NOW_MS} \
                       ORDER BY until_ms, destination \
                       LIMIT $3 \
                       FOR UPDATE SKIP LOCKED) \
                     RETURNING destination"
                ),
                vec![
                    node.into(),
                    ms(ttl).into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await?;
        destinations(rows)
    }

    /// Frees the leases of `list` that `node` holds, for any node to take at once; all of
    /// `node`'s leases when `list` is `None` (a graceful stop).
    pub async fn release_delivery_leases(
        &self,
        node: &str,
        list: Option<&[String]>,
    ) -> Result<u64, StoreError> {
        let statement = match list {
            Some([]) => return Ok(0),
            Some(list) => pg(
                "UPDATE delivery_leases SET node_id = NULL, until_ms = 0 \
                 WHERE node_id = $1 \
                 AND destination = ANY(ARRAY(SELECT jsonb_array_elements_text($2::jsonb)))"
                    .into(),
                vec![node.into(), names(list)],
            ),
            None => pg(
                "UPDATE delivery_leases SET node_id = NULL, until_ms = 0 WHERE node_id = $1".into(),
                vec![node.into()],
            ),
        };
        Ok(self.readers().execute(statement).await?.rows_affected())
    }

    /// The stored cursors of `list` (one read for the leases a tick took); a destination
    /// without one is absent.
    pub async fn delivery_cursors_of(
        &self,
        list: &[String],
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        use entities::delivery_cursors;
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        if list.is_empty() {
            return Ok(Default::default());
        }
        Ok(delivery_cursors::Entity::find()
            .filter(delivery_cursors::Column::Destination.is_in(list.iter().cloned()))
            .all(self.readers())
            .await?
            .into_iter()
            .map(|row| (row.destination, u64::try_from(row.cursor_seq).unwrap_or(0)))
            .collect())
    }

    /// The stored cursor of `destination`, if it has one.
    pub async fn delivery_cursor(&self, destination: &str) -> Result<Option<u64>, StoreError> {
        use sea_orm::EntityTrait;
        Ok(
            entities::delivery_cursors::Entity::find_by_id(destination.to_owned())
                .one(self.readers())
                .await?
                .map(|row| u64::try_from(row.cursor_seq).unwrap_or(0)),
        )
    }

    /// Stores `seq` as the cursor of a destination that has none; keeps an existing one. Every
    /// node's router sees a new destination at the same `seq`, and none of them may move a
    /// cursor that the lease holder owns.
    pub async fn init_delivery_cursor(
        &self,
        destination: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.readers()
            .execute(pg(
                "INSERT INTO delivery_cursors (destination, cursor_seq, updated_ts) \
                 VALUES ($1, $2, $3) ON CONFLICT (destination) DO NOTHING"
                    .into(),
                vec![
                    destination.into(),
                    i64::try_from(seq).unwrap_or(i64::MAX).into(),
                    crate::clock::now_ms().into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// Records that `destination` has everything up to `seq`, only if `node` holds a valid
    /// lease on it, in one statement (the first write creates the row). Answers whether it
    /// was written: `false` means the lease is lost.
    pub async fn set_delivery_cursor_leased(
        &self,
        destination: &str,
        seq: u64,
        node: &str,
    ) -> Result<bool, StoreError> {
        let written = self
            .readers()
            .execute(pg(
                format!(
                    "INSERT INTO delivery_cursors (destination, cursor_seq, updated_ts) \
                     SELECT $1, $2, $3 WHERE EXISTS ( \
                       SELECT 1 FROM delivery_leases \
                       WHERE destination = $1 AND node_id = $4 AND until_ms > {DB_NOW_MS}) \
                     ON CONFLICT (destination) DO UPDATE \
                     SET cursor_seq = EXCLUDED.cursor_seq, updated_ts = EXCLUDED.updated_ts"
                ),
                vec![
                    destination.into(),
                    i64::try_from(seq).unwrap_or(i64::MAX).into(),
                    crate::clock::now_ms().into(),
                    node.into(),
                ],
            ))
            .await?
            .rows_affected();
        Ok(written > 0)
    }

    /// Keeps an event `destination` refused for good, only if `node` holds a valid lease on
    /// it. Answers whether it was written: `false` means the lease is lost (the new holder
    /// sends the event again and records its own verdict).
    pub async fn add_dead_letter_leased(
        &self,
        destination: &str,
        seq: u64,
        event_id: &str,
        errcode: &str,
        error: &str,
        node: &str,
    ) -> Result<bool, StoreError> {
        let written = self
            .readers()
            .execute(pg(
                format!(
                    "INSERT INTO dead_letters (destination, seq, event_id, errcode, error, ts) \
                     SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS ( \
                       SELECT 1 FROM delivery_leases \
                       WHERE destination = $1 AND node_id = $7 AND until_ms > {DB_NOW_MS})"
                ),
                vec![
                    destination.into(),
                    i64::try_from(seq).unwrap_or(i64::MAX).into(),
                    event_id.into(),
                    errcode.into(),
                    error.chars().take(1000).collect::<String>().into(),
                    crate::clock::now_ms().into(),
                    node.into(),
                ],
            ))
            .await?
            .rows_affected();
        Ok(written > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::LeaseCensus;

    #[test]
    fn the_fair_share_rounds_up_and_survives_no_nodes() {
        let share = |destinations, nodes| {
            LeaseCensus {
                destinations,
                nodes,
            }
            .fair_share()
        };
        assert_eq!(share(4, 2), 2);
        assert_eq!(share(5, 2), 3);
        assert_eq!(share(3, 2), 2);
        assert_eq!(share(1, 3), 1);
        assert_eq!(share(0, 3), 0);
        assert_eq!(share(7, 0), 7);
    }
}
