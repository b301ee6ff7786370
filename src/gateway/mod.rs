//! The client gateway (DESIGN §5).
//!
//! - [`channel`]: the `Channel` actors and the router that hands them every committed event
//!   of their channel once, serialised once, in `seq` order;
//! - [`session`]: the `Session` actor of each WebSocket connection;
//! - [`frames`]: the polyproto envelope `{n, op, d, s}`, opcodes and close codes;
//! - [`tickets`]: single-use WebSocket tickets;
//! - [`cursors`]: each session's cursor, shared by the socket and REST catch-up;
//! - [`actions`]: what a local user may do to channels and messages, as log events.

pub mod actions;
pub mod admission;
pub mod channel;
pub mod cursors;
pub mod frames;
pub mod recent;
pub mod session;
pub mod tickets;
