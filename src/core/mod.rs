//! The pure heart of Switchyard: event and identifier rules, canonical JSON, the hash chain,
//! Merkle maths and projection semantics. Nothing here knows about actix or the database, so
//! all of it is tested with plain unit tests.

pub mod canonical_json;
pub mod chain;
pub mod event;
pub mod ids;
pub mod inbound;
pub mod merkle;
pub mod note;
pub mod projection;
pub mod tiles;
