//! sea-orm entities of Switchyard's database. No logic lives here: the `store` module of the
//! main crate is the only user of these types.
//!
//! `events` is the append-only log and the source of truth; every other table is a projection
//! derived from it in the same transaction and rebuildable with `switchyard replay`.

pub mod accounts;
pub mod actor_idcerts;
pub mod channels;
pub mod dead_letters;
pub mod delivery_cursors;
pub mod events;
pub mod foreign_idcerts;
pub mod log_checkpoints;
pub mod log_cosignatures;
pub mod members;
pub mod messages;
pub mod origin_policies;
pub mod remote_server_keys;
pub mod retired_server_keys;
pub mod server_idcerts;
pub mod services;
pub mod session_cursors;
pub mod sessions;
pub mod witnessed_logs;
