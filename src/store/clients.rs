//! Reads and cursors for the client API (DESIGN §5): channels and members, message history,
//! the events a user may see, and each session's cursor.

use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};

use super::{entry_from_row, Store, StoreError};
use crate::core::event::LogEntry;
use crate::core::projection::Membership;
use entities::{channels, events, members, messages, session_cursors};

/// Event types a client sees (DESIGN §5), as logged.
pub const CLIENT_TYPES: [&str; 7] = [
    "message.new",
    "message.edit",
    "message.delete",
    "channel.new",
    "channel.invite",
    "channel.join",
    "channel.leave",
];

/// What a member who is only invited sees of a channel: its membership changes.
pub const INVITED_TYPES: [&str; 3] = ["channel.invite", "channel.join", "channel.leave"];

fn as_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The events after `after` that `fid` sees (see [`Store::events_visible_to`]).
fn visible_to(fid: &str, after: u64) -> Condition {
    let channels_in = |state: Membership| {
        Query::select()
            .column(members::Column::ChannelRef)
            .from(members::Entity)
            .and_where(members::Column::Fid.eq(fid))
            .and_where(members::Column::State.eq(state.as_str()))
            .to_owned()
    };
    let visible = Condition::any()
        .add(events::Column::Channel.in_subquery(channels_in(Membership::Joined)))
        .add(
            Condition::all()
                .add(events::Column::EventType.is_in(INVITED_TYPES))
                .add(events::Column::Channel.in_subquery(channels_in(Membership::Invited))),
        )
        .add(
            Condition::all()
                .add(events::Column::EventType.eq("channel.leave"))
                .add(events::Column::Sender.eq(fid)),
        );
    Condition::all()
        .add(events::Column::Seq.gt(as_i64(after)))
        .add(events::Column::EventType.is_in(CLIENT_TYPES))
        .add(visible)
}

impl Store {
    /// The channel `channel_ref`, if this server knows it.
    pub async fn channel(&self, channel_ref: &str) -> Result<Option<channels::Model>, StoreError> {
        Ok(channels::Entity::find_by_id(channel_ref.to_owned())
            .one(self.readers())
            .await?)
    }

    /// The channels where `fid` is invited or joined, with that state.
    pub async fn channels_of(&self, fid: &str) -> Result<Vec<(String, Membership)>, StoreError> {
        let rows = members::Entity::find()
            .select_only()
            .column(members::Column::ChannelRef)
            .column(members::Column::State)
            .filter(members::Column::Fid.eq(fid))
            .filter(members::Column::State.is_in(["invited", "joined"]))
            .into_tuple::<(String, String)>()
            .all(self.readers())
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(channel, state)| Some((channel, Membership::parse(&state)?)))
            .collect())
    }

    /// Every membership of `fid`, left ones too, with the `seq` that set each (for the
    /// membership view, which must not let an older change land over a newer one).
    pub async fn memberships_of(
        &self,
        fid: &str,
    ) -> Result<Vec<(String, Membership, u64)>, StoreError> {
        let rows = members::Entity::find()
            .select_only()
            .column(members::Column::ChannelRef)
            .column(members::Column::State)
            .column(members::Column::UpdatedSeq)
            .filter(members::Column::Fid.eq(fid))
            .into_tuple::<(String, String, i64)>()
            .all(self.readers())
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(channel, state, seq)| {
                Some((
                    channel,
                    Membership::parse(&state)?,
                    u64::try_from(seq).ok()?,
                ))
            })
            .collect())
    }

    /// A message of `channel` (deleted ones too: their body is `None`).
    pub async fn message(
        &self,
        channel: &str,
        message_id: &str,
    ) -> Result<Option<messages::Model>, StoreError> {
        Ok(
            messages::Entity::find_by_id((channel.to_owned(), message_id.to_owned()))
                .one(self.readers())
                .await?,
        )
    }

    /// Up to `limit` messages of `channel` created before `seq` (all when `None`), newest first.
    pub async fn messages_before(
        &self,
        channel: &str,
        before: Option<u64>,
        limit: u64,
    ) -> Result<Vec<messages::Model>, StoreError> {
        let mut query = messages::Entity::find().filter(messages::Column::ChannelRef.eq(channel));
        if let Some(before) = before {
            query = query.filter(messages::Column::CreatedSeq.lt(as_i64(before)));
        }
        Ok(query
            .order_by_desc(messages::Column::CreatedSeq)
            .limit(limit)
            .all(self.readers())
            .await?)
    }

    /// Up to `limit` events after `after` that `fid` sees, oldest first: every client type of
    /// the channels it has joined, the membership changes of those it is invited to, and its
    /// own leaves. Membership is taken as it is now.
    pub async fn events_visible_to(
        &self,
        fid: &str,
        after: u64,
        limit: u64,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let rows = events::Entity::find()
            .filter(visible_to(fid, after))
            .order_by_asc(events::Column::Seq)
            .limit(limit)
            .all(self.readers())
            .await?;
        rows.into_iter().map(entry_from_row).collect()
    }

    /// The `seq`s of [`Store::events_visible_to`], up to `limit` of them: what a replay
    /// would send, without reading the events.
    pub async fn seqs_visible_to(
        &self,
        fid: &str,
        after: u64,
        limit: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let seqs = events::Entity::find()
            .select_only()
            .column(events::Column::Seq)
            .filter(visible_to(fid, after))
            .order_by_asc(events::Column::Seq)
            .limit(limit)
            .into_tuple::<i64>()
            .all(self.readers())
            .await?;
        Ok(seqs
            .into_iter()
            .map(|s| u64::try_from(s).unwrap_or(0))
            .collect())
    }

    /// The stored cursor of `session_id`.
    pub async fn session_cursor(&self, session_id: &str) -> Result<Option<u64>, StoreError> {
        let cursor = session_cursors::Entity::find_by_id(session_id.to_owned())
            .select_only()
            .column(session_cursors::Column::CursorSeq)
            .into_tuple::<i64>()
            .one(self.readers())
            .await?;
        Ok(cursor.map(|c| u64::try_from(c).unwrap_or(0)))
    }

    /// The statements that store session cursors (`(session_id, seq)`, one row each, every
    /// session at most once), in chunks that stay under both backends' limits on bound
    /// parameters. Run by the cursor flusher through `EventLogHandle::write_beside`.
    pub fn session_cursor_statements(
        cursors: &[(String, u64)],
        backend: sea_orm::DbBackend,
    ) -> Vec<sea_orm::Statement> {
        use sea_orm::QueryTrait;
        /// Three parameters a row: 3,000 parameters a statement.
        const ROWS_PER_STATEMENT: usize = 1_000;
        let now = crate::clock::now_ms();
        cursors
            .chunks(ROWS_PER_STATEMENT)
            .map(|chunk| {
                let rows = chunk
                    .iter()
                    .map(|(session_id, seq)| session_cursors::ActiveModel {
                        session_id: Set(session_id.clone()),
                        cursor_seq: Set(as_i64(*seq)),
                        updated_ts: Set(now),
                    });
                session_cursors::Entity::insert_many(rows)
                    .on_conflict(
                        OnConflict::column(session_cursors::Column::SessionId)
                            .update_columns([
                                session_cursors::Column::CursorSeq,
                                session_cursors::Column::UpdatedTs,
                            ])
                            .to_owned(),
                    )
                    .build(backend)
            })
            .collect()
    }

    /// Forgets the cursor of an ended session.
    pub async fn delete_session_cursor(&self, session_id: &str) -> Result<(), StoreError> {
        session_cursors::Entity::delete_by_id(session_id.to_owned())
            .exec(self.readers())
            .await?;
        Ok(())
    }
}
