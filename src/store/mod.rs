//! Storage: the only module that touches the database (through sea-orm).
//!
//! - [`Store`] opens the database (SQLite file in WAL mode by default, PostgreSQL when the URL
//!   names one), runs migrations and serves reads of the log;
//! - [`log`] holds the `EventLog` actor, the single writer of the `events` table;
//! - [`projections`] applies projection operations inside the writer's transaction;
//! - [`verify`] walks the hash chain; [`replay`] rebuilds the projections into a fresh database
//!   and compares them with the live ones.
//!
//! The writer keeps a connection of its own (`writer`), so appends never queue behind reads
//! for a pooled connection and SQLite never sees two writers.

pub mod audit;
pub mod bulk;
mod clients;
pub mod cluster;
pub mod leases;
pub mod log;
pub mod projections;
pub mod replay;
pub mod shared;
mod sqlite_thread;
pub mod tree;
pub mod verify;
pub(crate) mod writer;

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ColumnTrait, ConnectionTrait};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde_json::value::RawValue;

use crate::config::{Backend, DatabaseConfig, Durability};
use crate::core::chain::ChainHash;
use crate::core::event::LogEntry;
use entities::events;
use migrations::{Migrator, MigratorTrait};

pub use self::clients::{CLIENT_TYPES, INVITED_TYPES};
pub use self::leases::delivery_leases;
pub use self::log::{
    AppendError, AppendOutcome, CommittedBatch, EventLog, EventLogHandle, Fence, Forwarder,
    MerkleTree,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {url}: {source}")]
    Connect { url: String, source: DbErr },
    /// The database could not be reached or opened, said plainly (see `check_postgres`).
    #[error("cannot open the database {url}: {problem}")]
    Unreachable { url: String, problem: String },
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(DbErr),
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("log entry {seq} is unreadable: {problem}")]
    Corrupt { seq: i64, problem: String },
    #[error("database error: {0}")]
    SqliteWrite(#[from] sqlite_thread::SqliteWriteError),
    /// A cluster node that does not lead was asked to commit (DESIGN §7).
    #[error("this node is not the cluster's leader")]
    NotLeader,
    /// The commit's fence failed: another node leads now (or this node's writer connection,
    /// which held the leader's lock, was lost). Nothing was written.
    #[error("deposed: the cluster's leader epoch is no longer {epoch}")]
    Fenced { epoch: u64 },
    /// No node of the cluster leads at the moment (an election is under way).
    #[error("the cluster has no leader at the moment: {0}")]
    NoLeader(String),
}

impl StoreError {
    /// Whether this node must not commit (it follows, or was deposed).
    pub fn is_leadership(&self) -> bool {
        matches!(
            self,
            StoreError::NotLeader | StoreError::Fenced { .. } | StoreError::NoLeader(_)
        )
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// One connection to PostgreSQL before the pools are made: a pool only says "timed out"
/// after `connect_timeout`, while one connection says what failed (refused, a wrong password,
/// a database that does not exist).
async fn check_postgres(config: &DatabaseConfig) -> Result<(), StoreError> {
    use sea_orm::sqlx::{ConnectOptions as _, Connection as _};
    let url = redact_url(&config.url);
    let fail = |problem: String| StoreError::Unreachable {
        url: url.clone(),
        problem,
    };
    let options: sea_orm::sqlx::postgres::PgConnectOptions = config
        .url
        .parse()
        .map_err(|e| fail(format!("the URL is not a PostgreSQL URL: {e}")))?;
    let connection = tokio::time::timeout(config.connect_timeout, options.connect())
        .await
        .map_err(|_| {
            fail(format!(
                "no answer within {:?} (database.connect_timeout): is the server reachable?",
                config.connect_timeout
            ))
        })?;
    match connection {
        Ok(connection) => {
            let _ = connection.close().await;
            Ok(())
        }
        Err(sea_orm::sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            Err(fail(format!(
                "{}: create it first (CREATE DATABASE …); Switchyard creates its tables, not the database",
                e.message()
            )))
        }
        Err(sea_orm::sqlx::Error::Io(e)) => Err(fail(format!(
            "{e}: is PostgreSQL running and listening there?"
        ))),
        Err(sea_orm::sqlx::Error::Database(e)) => Err(fail(e.message().to_owned())),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// An open database: a reader pool and the writer's own connection.
#[derive(Clone)]
pub struct Store {
    readers: DatabaseConnection,
    writer: DatabaseConnection,
    /// In-memory SQLite: `readers` is the writer's pool (one database per connection).
    shared: bool,
    backend: Backend,
    /// A SQLite database file: the log writes it on a thread of its own.
    sqlite_file: Option<(std::path::PathBuf, Durability)>,
}

impl Store {
    /// Opens the database named by `config` (creating a SQLite file and its directory when
    /// missing). Does not migrate; call [`Store::migrate`].
    pub async fn connect(
        config: &DatabaseConfig,
        durability: Durability,
    ) -> Result<Store, StoreError> {
        let backend = config.backend().ok_or_else(|| StoreError::Connect {
            url: redact_url(&config.url),
            source: DbErr::Custom("unsupported database URL scheme".into()),
        })?;
        if let Some(dir) = config
            .sqlite_path()
            .and_then(|p| p.parent().map(|d| d.to_owned()))
        {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
        }
        let open = |max: u32| {
            let mut options = ConnectOptions::new(config.url.clone());
            options
                .max_connections(max)
                .min_connections(
                    if config.sqlite_path().is_none() && backend == Backend::Sqlite {
                        1
                    } else {
                        0
                    },
                )
                .connect_timeout(config.connect_timeout)
                .acquire_timeout(config.connect_timeout)
                // No ping before each acquire: for the writer that would be one more round
                // trip per transaction (measured: 0.4–1 ms of every group commit).
                .test_before_acquire(false)
                .sqlx_logging(false)
                .map_sqlx_sqlite_opts(move |o| {
                    o.journal_mode(SqliteJournalMode::Wal)
                        .synchronous(match durability {
                            Durability::Normal => SqliteSynchronous::Normal,
                            Durability::Full => SqliteSynchronous::Full,
                        })
                        .busy_timeout(Duration::from_secs(10))
                        .create_if_missing(true)
                });
            async move {
                Database::connect(options)
                    .await
                    .map_err(|source| StoreError::Connect {
                        url: redact_url(&config.url),
                        source,
                    })
            }
        };
        if backend == Backend::Postgres {
            check_postgres(config).await?;
        }
        let writer = open(1).await?;
        // An in-memory SQLite database exists once per connection: readers must share the
        // writer's connection to see its data.
        let shared = backend == Backend::Sqlite && config.sqlite_path().is_none();
        let readers = if shared {
            writer.clone()
        } else {
            open(config.max_connections).await?
        };
        Ok(Store {
            readers,
            writer,
            shared,
            backend,
            sqlite_file: config
                .sqlite_path()
                .filter(|_| backend == Backend::Sqlite)
                .map(|path| (path, durability)),
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        Migrator::up(&self.writer, None)
            .await
            .map_err(StoreError::Migrate)
    }

    /// The reader pool's PostgreSQL pool (a cluster node LISTENs on a connection of it).
    pub(crate) fn pg_pool(&self) -> sea_orm::sqlx::PgPool {
        self.readers.get_postgres_connection_pool().clone()
    }

    /// [`Store::migrate`] for a cluster node: nodes starting together take turns.
    pub async fn migrate_exclusive(&self) -> Result<(), StoreError> {
        cluster::migrate_exclusive(self).await
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The reader pool, for queries of the other modules of `store`.
    pub(crate) fn readers(&self) -> &DatabaseConnection {
        &self.readers
    }

    /// The newest entry's `seq` and `entry_hash`, or `(0, GENESIS)` for an empty log.
    pub async fn head(&self) -> Result<(u64, ChainHash), StoreError> {
        head_on(&self.writer).await
    }

    /// Up to `limit` entries with `seq > after`, in order.
    pub async fn read_after(&self, after: u64, limit: u64) -> Result<Vec<LogEntry>, StoreError> {
        let rows = events::Entity::find()
            .filter(events::Column::Seq.gt(after as i64))
            .order_by_asc(events::Column::Seq)
            .limit(limit)
            .all(&self.readers)
            .await?;
        rows.into_iter().map(entry_from_row).collect()
    }

    /// The newest entry, if any.
    pub async fn last_entry(&self) -> Result<Option<LogEntry>, StoreError> {
        events::Entity::find()
            .order_by_desc(events::Column::Seq)
            .limit(1)
            .one(&self.readers)
            .await?
            .map(entry_from_row)
            .transpose()
    }

    /// Whether the log holds `(origin, event_id)`.
    pub async fn has_event(&self, origin: &str, event_id: &str) -> Result<bool, StoreError> {
        let found = events::Entity::find()
            .select_only()
            .column(events::Column::Seq)
            .filter(events::Column::Origin.eq(origin))
            .filter(events::Column::EventId.eq(event_id))
            .into_tuple::<i64>()
            .one(&self.readers)
            .await?;
        Ok(found.is_some())
    }

    /// The last verified key response of `server_name`, if any.
    pub async fn remote_server_keys(
        &self,
        server_name: &str,
    ) -> Result<Option<entities::remote_server_keys::Model>, StoreError> {
        Ok(
            entities::remote_server_keys::Entity::find_by_id(server_name.to_owned())
                .one(&self.readers)
                .await?,
        )
    }

    /// Our retired signing keys, oldest first.
    pub async fn retired_server_keys(
        &self,
    ) -> Result<Vec<entities::retired_server_keys::Model>, StoreError> {
        use entities::retired_server_keys;
        Ok(retired_server_keys::Entity::find()
            .order_by_asc(retired_server_keys::Column::RetiredSeq)
            .all(&self.readers)
            .await?)
    }

    /// The membership of `fid` in `channel`, if it ever had one.
    pub async fn membership(
        &self,
        channel: &str,
        fid: &str,
    ) -> Result<Option<crate::core::projection::Membership>, StoreError> {
        use entities::members;
        let state = members::Entity::find_by_id((channel.to_owned(), fid.to_owned()))
            .select_only()
            .column(members::Column::State)
            .into_tuple::<String>()
            .one(&self.readers)
            .await?;
        Ok(state
            .as_deref()
            .and_then(crate::core::projection::Membership::parse))
    }

    /// Whether a user of `server_name` is invited to or joined in `channel`.
    pub async fn has_member_of(
        &self,
        channel: &str,
        server_name: &str,
    ) -> Result<bool, StoreError> {
        use entities::members;
        let found = members::Entity::find()
            .select_only()
            .column(members::Column::Fid)
            .filter(members::Column::ChannelRef.eq(channel))
            .filter(members::Column::Fid.like(format!("%@{server_name}")))
            .filter(members::Column::State.is_in(["invited", "joined"]))
            .into_tuple::<String>()
            .one(&self.readers)
            .await?;
        Ok(found.is_some())
    }

    /// Every (channel, fid) of channels homed at `server_name` whose member is invited or
    /// joined: where our channels have members.
    pub async fn members_of_channels_at(
        &self,
        server_name: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        use entities::members;
        Ok(members::Entity::find()
            .select_only()
            .column(members::Column::ChannelRef)
            .column(members::Column::Fid)
            .filter(members::Column::ChannelRef.like(format!("%@{server_name}")))
            .filter(members::Column::State.is_in(["invited", "joined"]))
            .into_tuple::<(String, String)>()
            .all(&self.readers)
            .await?)
    }

    /// Every destination's delivery cursor.
    pub async fn delivery_cursors(
        &self,
    ) -> Result<Vec<entities::delivery_cursors::Model>, StoreError> {
        Ok(entities::delivery_cursors::Entity::find()
            .all(&self.readers)
            .await?)
    }

    /// Records that `destination` has everything up to `seq`.
    pub async fn set_delivery_cursor(&self, destination: &str, seq: u64) -> Result<(), StoreError> {
        use entities::delivery_cursors;
        use sea_orm::sea_query::OnConflict;
        use sea_orm::Set;
        delivery_cursors::Entity::insert(delivery_cursors::ActiveModel {
            destination: Set(destination.to_owned()),
            cursor_seq: Set(i64::try_from(seq).unwrap_or(i64::MAX)),
            updated_ts: Set(crate::clock::now_ms()),
        })
        .on_conflict(
            OnConflict::column(delivery_cursors::Column::Destination)
                .update_columns([
                    delivery_cursors::Column::CursorSeq,
                    delivery_cursors::Column::UpdatedTs,
                ])
                .to_owned(),
        )
        .exec_without_returning(&self.readers)
        .await?;
        Ok(())
    }

    /// Keeps an event `destination` refused for good.
    pub async fn add_dead_letter(
        &self,
        destination: &str,
        seq: u64,
        event_id: &str,
        errcode: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        use sea_orm::{ActiveModelTrait, NotSet, Set};
        entities::dead_letters::ActiveModel {
            id: NotSet,
            destination: Set(destination.to_owned()),
            seq: Set(i64::try_from(seq).unwrap_or(i64::MAX)),
            event_id: Set(event_id.to_owned()),
            errcode: Set(errcode.to_owned()),
            error: Set(error.chars().take(1000).collect()),
            ts: Set(crate::clock::now_ms()),
        }
        .insert(&self.readers)
        .await?;
        Ok(())
    }

    /// The newest dead letters of `destination`, newest first.
    pub async fn dead_letters(
        &self,
        destination: &str,
        limit: u64,
    ) -> Result<Vec<entities::dead_letters::Model>, StoreError> {
        use entities::dead_letters;
        Ok(dead_letters::Entity::find()
            .filter(dead_letters::Column::Destination.eq(destination))
            .order_by_desc(dead_letters::Column::Id)
            .limit(limit)
            .all(&self.readers)
            .await?)
    }

    /// The sender of a live (not deleted) message: `None` when there is no such message.
    pub async fn message_sender(
        &self,
        channel: &str,
        message_id: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        use entities::messages;
        Ok(
            messages::Entity::find_by_id((channel.to_owned(), message_id.to_owned()))
                .filter(messages::Column::DeletedSeq.is_null())
                .one(&self.readers)
                .await?
                .map(|m| m.sender),
        )
    }

    /// The session `session_id`, if it exists (deleted sessions do not).
    pub async fn session(
        &self,
        session_id: &str,
    ) -> Result<Option<entities::sessions::Model>, StoreError> {
        Ok(
            entities::sessions::Entity::find_by_id(session_id.to_owned())
                .one(&self.readers)
                .await?,
        )
    }

    /// The local account `username`, if it exists.
    pub async fn account(
        &self,
        username: &str,
    ) -> Result<Option<entities::accounts::Model>, StoreError> {
        Ok(entities::accounts::Entity::find_by_id(username.to_owned())
            .one(&self.readers)
            .await?)
    }

    /// The session whose bearer token hashes to `token_hash`.
    pub async fn session_by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<entities::sessions::Model>, StoreError> {
        use entities::sessions;
        Ok(sessions::Entity::find()
            .filter(sessions::Column::TokenHash.eq(token_hash))
            .one(&self.readers)
            .await?)
    }

    /// The operator's per-origin policies (`origin.policy` events, last one wins).
    pub async fn origin_policies(
        &self,
    ) -> Result<Vec<entities::origin_policies::Model>, StoreError> {
        Ok(entities::origin_policies::Entity::find()
            .all(&self.readers)
            .await?)
    }

    /// The root ID-Certs we issued, oldest first.
    /// Our actor certificates that have not expired at `now` (unix seconds).
    pub async fn actor_idcerts_unexpired(
        &self,
        now: i64,
    ) -> Result<Vec<entities::actor_idcerts::Model>, StoreError> {
        use entities::actor_idcerts;
        Ok(actor_idcerts::Entity::find()
            .filter(actor_idcerts::Column::NotAfter.gte(now))
            .order_by_asc(actor_idcerts::Column::IssuedSeq)
            .all(self.readers())
            .await?)
    }

    /// Our actor certificates of `fid` whose validity contains `at` (unix seconds), oldest
    /// first: questions about the past, which memory does not hold.
    pub async fn actor_idcerts_at(
        &self,
        fid: &str,
        at: i64,
    ) -> Result<Vec<entities::actor_idcerts::Model>, StoreError> {
        use entities::actor_idcerts;
        Ok(actor_idcerts::Entity::find()
            .filter(actor_idcerts::Column::Fid.eq(fid))
            .filter(actor_idcerts::Column::NotBefore.lte(at))
            .filter(actor_idcerts::Column::NotAfter.gte(at))
            .order_by_asc(actor_idcerts::Column::IssuedSeq)
            .all(self.readers())
            .await?)
    }

    /// Whether another server's certificate of `fid` was ever accepted here.
    pub async fn has_foreign_idcert(&self, fid: &str) -> Result<bool, StoreError> {
        use entities::foreign_idcerts;
        Ok(foreign_idcerts::Entity::find()
            .filter(foreign_idcerts::Column::Fid.eq(fid))
            .one(self.readers())
            .await?
            .is_some())
    }

    /// The services of `fid` (of `service` when given), oldest first.
    pub async fn services(
        &self,
        fid: &str,
        service: Option<&str>,
    ) -> Result<Vec<entities::services::Model>, StoreError> {
        use entities::services;
        let mut query = services::Entity::find().filter(services::Column::Fid.eq(fid));
        if let Some(service) = service {
            query = query.filter(services::Column::Service.eq(service));
        }
        Ok(query
            .order_by_asc(services::Column::CreatedSeq)
            .all(self.readers())
            .await?)
    }

    /// The live sessions of other servers' actors (foreign sessions).
    pub async fn foreign_sessions(&self) -> Result<Vec<entities::sessions::Model>, StoreError> {
        use entities::sessions;
        Ok(sessions::Entity::find()
            .filter(sessions::Column::IdcertSerial.is_not_null())
            .all(self.readers())
            .await?)
    }

    pub async fn server_idcerts(&self) -> Result<Vec<entities::server_idcerts::Model>, StoreError> {
        use entities::server_idcerts;
        Ok(server_idcerts::Entity::find()
            .order_by_asc(server_idcerts::Column::IssuedSeq)
            .all(&self.readers)
            .await?)
    }

    /// Closes both pools (checkpointing a SQLite WAL).
    pub async fn close(self) -> Result<(), StoreError> {
        self.readers.close().await?;
        if !self.shared {
            self.writer.close().await?;
        }
        Ok(())
    }
}

pub(crate) async fn head_on(db: &impl ConnectionTrait) -> Result<(u64, ChainHash), StoreError> {
    let last = events::Entity::find()
        .select_only()
        .column(events::Column::Seq)
        .column(events::Column::EntryHash)
        .order_by_desc(events::Column::Seq)
        .limit(1)
        .into_tuple::<(i64, String)>()
        .one(db)
        .await?;
    match last {
        None => Ok((0, ChainHash::GENESIS)),
        Some((seq, hash)) => {
            let hash = hash
                .parse()
                .map_err(|e: crate::core::chain::BadChainHash| StoreError::Corrupt {
                    seq,
                    problem: e.to_string(),
                })?;
            Ok((seq as u64, hash))
        }
    }
}

/// Converts a row into a [`LogEntry`], refusing rows whose stored hashes or content are
/// unreadable (which only a hand-edited database can hold).
pub(crate) fn entry_from_row(row: events::Model) -> Result<LogEntry, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt {
        seq: row.seq,
        problem,
    };
    let prev_hash = row
        .prev_hash
        .parse()
        .map_err(|e: crate::core::chain::BadChainHash| corrupt(format!("prev_hash: {e}")))?;
    let entry_hash = row
        .entry_hash
        .parse()
        .map_err(|e: crate::core::chain::BadChainHash| corrupt(format!("entry_hash: {e}")))?;
    let content =
        RawValue::from_string(row.content.clone()).map_err(|e| corrupt(format!("content: {e}")))?;
    let seq = u64::try_from(row.seq).map_err(|_| corrupt("negative seq".into()))?;
    Ok(LogEntry {
        seq,
        event_id: row.event_id,
        origin: row.origin,
        event_type: row.event_type,
        sender: row.sender,
        channel: row.channel,
        origin_ts: row.origin_ts,
        received_ts: row.received_ts,
        content,
        prev_hash,
        entry_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://sy:secret@127.0.0.1/db"),
            "postgres://sy:***@127.0.0.1/db"
        );
        assert_eq!(redact_url("postgres://sy@h/db"), "postgres://sy@h/db");
        assert_eq!(
            redact_url("sqlite://data/x.db?mode=rwc"),
            "sqlite://data/x.db?mode=rwc"
        );
    }
}
