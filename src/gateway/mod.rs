//! The client gateway. Built so far: the `Channel` actors that receive every committed event
//! of their channel once, serialised once, and hand the shared bytes to their subscribers
//! ([`channel`]); the WebSocket `Session` actors subscribe to them.

pub mod channel;
