//! The log writer's own database connection.
//!
//! A pooled connection costs a round trip every time it goes back to the pool: sqlx pings it
//! on release, and the next `BEGIN` waits for that. Measured on SQLite here that is 0.4–1 ms of
//! every group commit. The writer is the only user of its connection, so it takes one out of
//! the pool for good ([`PoolConnection::detach`]) and runs its transactions on it with
//! explicit `BEGIN`/`COMMIT`/`ROLLBACK`. [`ConnectionTrait`] is implemented over it, so every
//! statement of the write path is the same sea-orm code as anywhere else.
//!
//! After an error whose effect on the connection is unknown (a failed `COMMIT` or
//! `ROLLBACK`), the connection is dropped and a fresh one is taken from the pool.

use sea_orm::prelude::async_trait;
use sea_orm::sqlx::{
    self, pool::PoolConnection, Executor, PgConnection, Postgres, Sqlite, SqliteConnection,
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr,
    Statement,
};
use sea_query_binder::SqlxValues;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

enum Raw {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

pub(crate) struct WriterConnection {
    pool: DatabaseConnection,
    backend: DbBackend,
    raw: Mutex<Option<Raw>>,
    /// A cluster node's fence (DESIGN §7): every transaction checks the leader's epoch and
    /// that it runs on the connection holding the leader's lock. `None` on one node.
    pub(crate) fence: Option<std::sync::Arc<super::log::Fence>>,
    /// A transaction is open on the connection: if the connection is lost now, no other may
    /// take its place until the transaction's end is acknowledged, or the transaction's
    /// remaining statements (and its COMMIT) would run on the new one in autocommit.
    in_txn: std::sync::atomic::AtomicBool,
}

/// Whether `error` means the connection itself is unusable: I/O, protocol or TLS failures,
/// or a PostgreSQL error of class 08 (connection exception) or 57P (`pg_terminate_backend`,
/// a shutdown, a crash of the server).
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        // Not 57014 (query_canceled: a statement timeout; the session is fine).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || (code.starts_with("57P"))),
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

fn exec_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(e))
}

fn query_err(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(e))
}

fn values(stmt: &mut Statement) -> SqlxValues {
    SqlxValues(
        stmt.values
            .take()
            .unwrap_or_else(|| sea_orm::sea_query::Values(Vec::new())),
    )
}

impl WriterConnection {
    /// Takes a connection of `pool` (a sea-orm pool with the writer's settings) for good.
    pub(crate) async fn open(
        pool: DatabaseConnection,
        fence: Option<std::sync::Arc<super::log::Fence>>,
    ) -> Result<WriterConnection, DbErr> {
        let backend = pool.get_database_backend();
        let raw = Self::take(&pool).await?;
        Ok(WriterConnection {
            pool,
            backend,
            raw: Mutex::new(Some(raw)),
            fence,
            in_txn: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// `BEGIN`, then, on a cluster node, the fence: the transaction holds the leader row
    /// `FOR SHARE` only if its epoch is still ours and this connection is the one that took
    /// the leader's lock. A new leader's epoch bump waits for that share lock, so a commit of
    /// the deposed leader either ends before the bump or fails here: the chain never forks.
    pub(crate) async fn begin_fenced(&self) -> Result<(), super::StoreError> {
        self.begin().await?;
        let Some(fence) = &self.fence else {
            return Ok(());
        };
        let Some(epoch) = fence.epoch() else {
            self.rollback().await;
            return Err(super::StoreError::NotLeader);
        };
        let held = self
            .query_one(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT epoch FROM cluster_leader WHERE id = 1 AND epoch = $1 \
                 AND backend_pid = pg_backend_pid() FOR SHARE",
                [sea_orm::Value::BigInt(Some(epoch as i64))],
            ))
            .await;
        match held {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                self.rollback().await;
                fence.lost();
                Err(super::StoreError::Fenced { epoch })
            }
            Err(error) => {
                self.rollback().await;
                Err(error.into())
            }
        }
    }

    /// On a cluster node, `NOTIFY` the followers of the committed range (delivered at
    /// `COMMIT`, once per group commit; only the leader notifies, DESIGN §7).
    pub(crate) async fn notify_range(&self, first: u64, last: u64) -> Result<(), DbErr> {
        if self.fence.is_none() {
            return Ok(());
        }
        self.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify('switchyard_log', $1)",
            [sea_orm::Value::String(Some(Box::new(format!(
                "{first}-{last}"
            ))))],
        ))
        .await
        .map(|_| ())
    }

    async fn take(pool: &DatabaseConnection) -> Result<Raw, DbErr> {
        fn detach<DB: sqlx::Database>(c: PoolConnection<DB>) -> DB::Connection {
            c.detach()
        }
        Ok(match pool.get_database_backend() {
            DbBackend::Postgres => Raw::Postgres(detach::<Postgres>(
                pool.get_postgres_connection_pool()
                    .acquire()
                    .await
                    .map_err(exec_err)?,
            )),
            _ => Raw::Sqlite(detach::<Sqlite>(
                pool.get_sqlite_connection_pool()
                    .acquire()
                    .await
                    .map_err(exec_err)?,
            )),
        })
    }

    pub(crate) async fn begin(&self) -> Result<(), DbErr> {
        self.execute_unprepared("BEGIN").await?;
        self.in_txn
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Whether a transaction is open (a cluster node's loop leaves the connection alone
    /// meanwhile).
    pub(crate) fn in_transaction(&self) -> bool {
        self.in_txn.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Commits; if the outcome is unknown the connection is replaced before the next use.
    pub(crate) async fn commit(&self) -> Result<(), DbErr> {
        let result = self.execute_unprepared("COMMIT").await.map(|_| ());
        self.in_txn
            .store(false, std::sync::atomic::Ordering::Release);
        if result.is_err() {
            self.discard().await;
        }
        result
    }

    /// Rolls back; a connection that cannot roll back is replaced. A connection lost inside
    /// the transaction took the transaction with it: nothing to roll back.
    pub(crate) async fn rollback(&self) {
        let lost = self.raw.lock().await.is_none();
        if lost || self.execute_unprepared("ROLLBACK").await.is_err() {
            self.discard().await;
        }
        self.in_txn
            .store(false, std::sync::atomic::Ordering::Release);
    }

    async fn discard(&self) {
        *self.raw.lock().await = None;
    }

    /// A PostgreSQL connection that is gone (its session terminated, the server restarted,
    /// the network cut) is replaced before the next statement, whatever statement found
    /// out: otherwise a node whose writer connection died could never commit or lead again.
    /// (SQLite connections are files, never lost this way; an in-memory one must be kept.)
    async fn after<T>(&self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if let Err(error) = &result {
            if self.backend == DbBackend::Postgres && connection_lost(error) {
                self.discard().await;
            }
        }
        result
    }

    /// The connection, opening a fresh one if the last was discarded.
    async fn connection(&self) -> Result<MappedMutexGuard<'_, Raw>, DbErr> {
        let mut guard = self.raw.lock().await;
        if guard.is_none() {
            if self.in_transaction() {
                return Err(DbErr::Custom(
                    "the log writer's connection was lost inside a transaction".into(),
                ));
            }
            *guard = Some(Self::take(&self.pool).await?);
        }
        MutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| DbErr::Custom("the log writer has no database connection".into()))
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for WriterConnection {
    fn get_database_backend(&self) -> DbBackend {
        self.backend
    }

    async fn execute(&self, mut stmt: Statement) -> Result<ExecResult, DbErr> {
        let values = values(&mut stmt);
        let result = match &mut *self.connection().await? {
            Raw::Sqlite(c) => c
                .execute(sqlx::query_with(&stmt.sql, values))
                .await
                .map(Into::into),
            Raw::Postgres(c) => c
                .execute(sqlx::query_with(&stmt.sql, values))
                .await
                .map(Into::into),
        };
        self.after(result).await.map_err(exec_err)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let result = match &mut *self.connection().await? {
            Raw::Sqlite(c) => c.execute(sql).await.map(Into::into),
            Raw::Postgres(c) => c.execute(sql).await.map(Into::into),
        };
        self.after(result).await.map_err(exec_err)
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        Ok(self.query_all(stmt).await?.into_iter().next())
    }

    async fn query_all(&self, mut stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let values = values(&mut stmt);
        let result = match &mut *self.connection().await? {
            Raw::Sqlite(c) => sqlx::query_with(&stmt.sql, values)
                .fetch_all(c)
                .await
                .map(|rows| rows.into_iter().map(Into::into).collect()),
            Raw::Postgres(c) => sqlx::query_with(&stmt.sql, values)
                .fetch_all(c)
                .await
                .map(|rows| rows.into_iter().map(Into::into).collect()),
        };
        self.after(result).await.map_err(query_err)
    }
}
