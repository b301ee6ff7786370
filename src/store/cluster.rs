//! The cluster's coordination state in PostgreSQL (DESIGN §7): the leader row (epoch, lease,
//! the leader's address and database session), the nodes' heartbeats. The rules that use them
//! live in `cluster::node`; only the SQL is here, like every other statement of the server.
//!
//! Every time is PostgreSQL's clock ([`DB_NOW_MS`]): nodes whose clocks differ still agree on
//! whose lease has run out.

use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement, Value};

use super::writer::WriterConnection;
use super::{Store, StoreError};
use crate::cluster::DB_NOW_MS;

/// The advisory lock the leader holds on its writer connection.
const LEADER_LOCK: i64 = 0x5377_7964_4c65_6164; // "SwydLead"
/// The advisory lock nodes take around migrations, so three nodes starting at once do not
/// race to create the same tables.
const MIGRATION_LOCK: i64 = 0x5377_7964_4d69_6772; // "SwydMigr"

fn pg(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn text(value: &str) -> Value {
    Value::String(Some(Box::new(value.to_owned())))
}

/// The leader row as a node reads it.
#[derive(Clone, Debug, FromQueryResult)]
pub struct LeaderRow {
    pub epoch: i64,
    pub node_id: Option<String>,
    pub advertise_url: Option<String>,
    pub backend_pid: Option<i32>,
    pub lease_until_ms: i64,
    /// The database's clock when the row was read.
    pub now_ms: i64,
}

/// One node as the cluster table has it.
#[derive(Clone, Debug, FromQueryResult, serde::Serialize)]
pub struct NodeRow {
    pub node_id: String,
    pub advertise_url: String,
    pub role: String,
    pub epoch: i64,
    pub applied_seq: i64,
    pub started_ms: i64,
    pub seen_ms: i64,
}

/// Tries the leader's advisory lock on the writer's connection (session-level: it is held
/// until released or the connection ends, so a leader that dies releases it).
pub(crate) async fn try_lock(conn: &WriterConnection) -> Result<bool, StoreError> {
    let row = conn
        .query_one(pg(
            "SELECT pg_try_advisory_lock($1) AS locked",
            [Value::BigInt(Some(LEADER_LOCK))],
        ))
        .await?;
    Ok(row
        .map(|r| r.try_get::<bool>("", "locked"))
        .transpose()?
        .unwrap_or(false))
}

/// Releases the leader's lock (best effort: a lost connection released it already).
pub(crate) async fn unlock(conn: &WriterConnection) {
    let _ = conn
        .execute(pg(
            "SELECT pg_advisory_unlock($1)",
            [Value::BigInt(Some(LEADER_LOCK))],
        ))
        .await;
}

/// Takes the lead: bumps the epoch and records this node, its address and the writer's
/// database session, with a fresh lease. Runs on the writer's connection (the one holding the
/// lock), so `pg_backend_pid()` names the session every fenced commit must come from. The
/// UPDATE waits for any commit of the previous leader that holds the row `FOR SHARE`.
pub(crate) async fn bump_epoch(
    conn: &WriterConnection,
    node_id: &str,
    advertise_url: &str,
    lease_ttl_ms: i64,
) -> Result<u64, StoreError> {
    let sql = format!(
        "UPDATE cluster_leader SET epoch = epoch + 1, node_id = $1, advertise_url = $2, \
         backend_pid = pg_backend_pid(), lease_until_ms = {DB_NOW_MS} + $3 \
         WHERE id = 1 RETURNING epoch"
    );
    let row = conn
        .query_one(pg(
            &sql,
            [
                text(node_id),
                text(advertise_url),
                Value::BigInt(Some(lease_ttl_ms)),
            ],
        ))
        .await?
        .ok_or_else(|| StoreError::Corrupt {
            seq: 0,
            problem: "the cluster_leader row is missing (migrations not run?)".into(),
        })?;
    Ok(row.try_get::<i64>("", "epoch")? as u64)
}

/// Renews the leader's lease, only while `epoch` is still the current one and the session
/// the leader row names still holds the leader's lock (a leader whose writer connection died
/// lost the lock with it, and must not keep a lease it cannot commit under). `false`: step
/// down. Runs on the leader's own lease connection, never behind client traffic in the pool.
pub(crate) async fn renew(
    conn: &WriterConnection,
    epoch: u64,
    lease_ttl_ms: i64,
) -> Result<bool, StoreError> {
    let sql = format!(
        "UPDATE cluster_leader SET lease_until_ms = {DB_NOW_MS} + $2 \
         WHERE id = 1 AND epoch = $1 AND EXISTS (SELECT 1 FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND pid = cluster_leader.backend_pid \
         AND objsubid = 1 AND database = (SELECT oid FROM pg_database \
         WHERE datname = current_database()) \
         AND ((classid::bigint << 32) | objid::bigint) = $3) RETURNING epoch"
    );
    let row = conn
        .query_one(pg(
            &sql,
            [
                Value::BigInt(Some(epoch as i64)),
                Value::BigInt(Some(lease_ttl_ms)),
                Value::BigInt(Some(LEADER_LOCK)),
            ],
        ))
        .await?;
    Ok(row.is_some())
}

/// The leader row, with the database's clock.
pub async fn leader(store: &Store) -> Result<Option<LeaderRow>, StoreError> {
    let sql = format!(
        "SELECT epoch, node_id, advertise_url, backend_pid, lease_until_ms, \
         {DB_NOW_MS} AS now_ms FROM cluster_leader WHERE id = 1"
    );
    Ok(LeaderRow::find_by_statement(pg(&sql, []))
        .one(store.readers())
        .await?)
}

/// Ends the database session of a leader whose lease ran out while it kept its connection
/// (a hung or paused process still answers TCP keepalives), which releases its lock. One
/// statement decides and acts: the leader row must still be at `epoch` with its lease run
/// out, and the session it names must hold the leader's lock (a process id alone could have
/// been reused). The row is not locked (a leader hung inside a commit holds it `FOR SHARE`
/// for good), so a renewal that commits in the same microsecond could still lose: a leader
/// that late had already missed its lease by a third. `true` when one was terminated.
pub(crate) async fn depose(store: &Store, epoch: i64) -> Result<bool, StoreError> {
    let sql = format!(
        "SELECT pg_terminate_backend(l.pid) AS terminated FROM cluster_leader c \
         JOIN pg_locks l ON l.pid = c.backend_pid AND l.locktype = 'advisory' AND l.granted \
         AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database \
         WHERE datname = current_database()) \
         AND ((l.classid::bigint << 32) | l.objid::bigint) = $2 \
         WHERE c.id = 1 AND c.epoch = $1 AND c.lease_until_ms < {DB_NOW_MS}"
    );
    let row = store
        .readers()
        .query_one(pg(
            &sql,
            [Value::BigInt(Some(epoch)), Value::BigInt(Some(LEADER_LOCK))],
        ))
        .await?;
    Ok(row
        .map(|r| r.try_get::<bool>("", "terminated"))
        .transpose()?
        .unwrap_or(false))
}

/// A connection of its own for the leader's lease (see [`renew`]).
pub(crate) async fn lease_connection(store: &Store) -> Result<WriterConnection, StoreError> {
    Ok(WriterConnection::open(store.writer.clone(), None).await?)
}

/// Records this node's heartbeat: role, epoch, applied seq.
pub(crate) async fn heartbeat(
    store: &Store,
    node_id: &str,
    advertise_url: &str,
    role: &str,
    epoch: u64,
    applied_seq: u64,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO cluster_nodes (node_id, advertise_url, role, epoch, applied_seq, \
         started_ms, seen_ms) VALUES ($1, $2, $3, $4, $5, {DB_NOW_MS}, {DB_NOW_MS}) \
         ON CONFLICT (node_id) DO UPDATE SET advertise_url = EXCLUDED.advertise_url, \
         role = EXCLUDED.role, epoch = EXCLUDED.epoch, applied_seq = EXCLUDED.applied_seq, \
         seen_ms = EXCLUDED.seen_ms"
    );
    store
        .readers()
        .execute(pg(
            &sql,
            [
                text(node_id),
                text(advertise_url),
                text(role),
                Value::BigInt(Some(epoch as i64)),
                Value::BigInt(Some(applied_seq as i64)),
            ],
        ))
        .await?;
    Ok(())
}

/// Marks this node gone (a graceful stop), so the cluster view shows it at once.
pub(crate) async fn leave(store: &Store, node_id: &str) -> Result<(), StoreError> {
    store
        .readers()
        .execute(pg(
            "UPDATE cluster_nodes SET role = 'stopped' WHERE node_id = $1",
            [text(node_id)],
        ))
        .await?;
    Ok(())
}

/// Every node that has ever joined, newest heartbeat first, with the database's clock.
pub async fn nodes(store: &Store) -> Result<(Vec<NodeRow>, i64), StoreError> {
    let rows = NodeRow::find_by_statement(pg(
        "SELECT node_id, advertise_url, role, epoch, applied_seq, started_ms, seen_ms \
         FROM cluster_nodes ORDER BY node_id",
        [],
    ))
    .all(store.readers())
    .await?;
    let now = store
        .readers()
        .query_one(pg(&format!("SELECT {DB_NOW_MS} AS now_ms"), []))
        .await?
        .map(|r| r.try_get::<i64>("", "now_ms"))
        .transpose()?
        .unwrap_or(0);
    Ok((rows, now))
}

/// Runs the migrations under an advisory lock, so nodes starting together take turns.
pub(crate) async fn migrate_exclusive(store: &Store) -> Result<(), StoreError> {
    use migrations::{Migrator, MigratorTrait};
    let lock = WriterConnection::open(store.writer.clone(), None).await?;
    lock.execute(pg(
        "SELECT pg_advisory_lock($1)",
        [Value::BigInt(Some(MIGRATION_LOCK))],
    ))
    .await?;
    let migrated = Migrator::up(&store.writer, None)
        .await
        .map_err(StoreError::Migrate);
    let _ = lock
        .execute(pg(
            "SELECT pg_advisory_unlock($1)",
            [Value::BigInt(Some(MIGRATION_LOCK))],
        ))
        .await;
    migrated
}
