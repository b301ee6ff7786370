//! The log writer's SQLite connection on a thread of its own (file databases).
//!
//! Through sqlx, every statement is a round trip to sqlx's worker thread, and a group commit
//! is four of them (BEGIN, two INSERTs, COMMIT), each with its own wake-ups; on this 2-core
//! machine the handoffs cost more than SQLite's own work. Here the writer hands over the whole
//! transaction at once: the statements of a batch are recorded first ([`Recorder`], the same
//! sea-orm code that writes through sqlx), then run by this thread inside one
//! `BEGIN IMMEDIATE … COMMIT` with cached prepared statements, and answered with one message.
//!
//! Readers keep using the sqlx pool: with WAL they see each commit as soon as it returns.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::types::{ToSqlOutput, Value as SqlValue};
use rusqlite::Connection;
use sea_orm::prelude::async_trait;
use sea_orm::sqlx::sqlite::SqliteQueryResult;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, Statement, Value};
use tokio::sync::oneshot;

use crate::config::Durability;

/// Why the thread could not run a transaction.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SqliteWriteError {
    pub message: String,
    /// A UNIQUE constraint refused a row (a duplicate `(origin, event_id)`).
    pub unique_violation: bool,
}

impl From<rusqlite::Error> for SqliteWriteError {
    fn from(error: rusqlite::Error) -> Self {
        let unique_violation = matches!(
            &error,
            rusqlite::Error::SqliteFailure(e, _)
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        );
        SqliteWriteError {
            message: error.to_string(),
            unique_violation,
        }
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle on the writer thread; the thread closes the connection when the last handle goes.
pub struct SqliteThread {
    jobs: mpsc::Sender<Job>,
}

impl SqliteThread {
    /// Opens `path` with the log's settings (WAL, `durability`, a 10 s busy timeout).
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteThread, SqliteWriteError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match durability {
                Durability::Normal => "NORMAL",
                Durability::Full => "FULL",
            },
        )?;
        conn.set_prepared_statement_cache_capacity(64);
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sy-log-sqlite".into())
            .spawn(move || {
                let mut conn = conn;
                while let Ok(job) = queue.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| SqliteWriteError {
                message: format!("cannot start the SQLite writer thread: {e}"),
                unique_violation: false,
            })?;
        Ok(SqliteThread { jobs })
    }

    /// Runs `f` on the writer thread.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> Result<R, SqliteWriteError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }

    /// Runs `statements` in one transaction: all of them, or none.
    pub async fn transaction(&self, statements: Vec<Statement>) -> Result<(), SqliteWriteError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for statement in &statements {
                execute(&tx, statement)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?
    }
}

fn stopped() -> SqliteWriteError {
    SqliteWriteError {
        message: "the SQLite writer thread has stopped".into(),
        unique_violation: false,
    }
}

/// A sea-query value as SQLite stores it.
fn to_sql(value: &Value) -> Result<ToSqlOutput<'_>, SqliteWriteError> {
    use rusqlite::types::ValueRef;
    Ok(match value {
        Value::BigInt(v) => v.map_or(ToSqlOutput::Owned(SqlValue::Null), |v| {
            ToSqlOutput::Owned(SqlValue::Integer(v))
        }),
        Value::Int(v) => v.map_or(ToSqlOutput::Owned(SqlValue::Null), |v| {
            ToSqlOutput::Owned(SqlValue::Integer(i64::from(v)))
        }),
        Value::BigUnsigned(v) => match v {
            None => ToSqlOutput::Owned(SqlValue::Null),
            Some(v) => ToSqlOutput::Owned(SqlValue::Integer(i64::try_from(*v).map_err(|_| {
                SqliteWriteError {
                    message: format!("{v} does not fit an SQLite integer"),
                    unique_violation: false,
                }
            })?)),
        },
        Value::Bool(v) => v.map_or(ToSqlOutput::Owned(SqlValue::Null), |v| {
            ToSqlOutput::Owned(SqlValue::Integer(i64::from(v)))
        }),
        Value::String(v) => match v {
            None => ToSqlOutput::Owned(SqlValue::Null),
            Some(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        },
        Value::Bytes(v) => match v {
            None => ToSqlOutput::Owned(SqlValue::Null),
            Some(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b.as_slice())),
        },
        other => {
            return Err(SqliteWriteError {
                message: format!("the log writer cannot bind {other:?}"),
                unique_violation: false,
            })
        }
    })
}

fn execute(conn: &Connection, statement: &Statement) -> Result<(), SqliteWriteError> {
    let mut prepared = conn.prepare_cached(&statement.sql)?;
    if let Some(values) = &statement.values {
        for (i, value) in values.0.iter().enumerate() {
            prepared.raw_bind_parameter(i + 1, to_sql(value)?)?;
        }
    }
    prepared.raw_execute()?;
    Ok(())
}

/// A connection that runs nothing: it records the statements the write path would execute,
/// so they can go to the writer thread in one piece. Queries are refused.
pub(crate) struct Recorder {
    pub statements: std::sync::Mutex<Vec<Statement>>,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            statements: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn into_statements(self) -> Vec<Statement> {
        self.statements
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Recorder {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stmt);
        Ok(SqliteQueryResult::default().into())
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.execute(Statement::from_string(DbBackend::Sqlite, sql))
            .await
    }

    async fn query_one(&self, _: Statement) -> Result<Option<QueryResult>, DbErr> {
        Err(DbErr::Custom(
            "the statement recorder does not run queries".into(),
        ))
    }

    async fn query_all(&self, _: Statement) -> Result<Vec<QueryResult>, DbErr> {
        Err(DbErr::Custom(
            "the statement recorder does not run queries".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_failing_statement_rolls_back_the_whole_transaction() {
        let dir = tempfile::tempdir().expect("dir");
        let thread =
            SqliteThread::open(&dir.path().join("t.db"), Durability::Normal).expect("open");
        thread
            .run(|c| c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER)"))
            .await
            .expect("run")
            .expect("create");
        let insert = |k: &str, n: i64| {
            Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "INSERT INTO t (k, n) VALUES (?, ?)",
                [Value::from(k.to_owned()), Value::BigInt(Some(n))],
            )
        };
        thread
            .transaction(vec![insert("a", 1), insert("b", 2)])
            .await
            .expect("commit");
        let error = thread
            .transaction(vec![insert("c", 3), insert("a", 4)])
            .await
            .expect_err("duplicate key");
        assert!(error.unique_violation, "{error}");
        let count: i64 = thread
            .run(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .expect("run")
            .expect("count");
        assert_eq!(count, 2, "the failed transaction left nothing");
    }
}
