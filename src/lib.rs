//! Switchyard: a federation router for community chat.
//!
//! Codemap (see ARCHITECTURE.md for the invariants):
//! - [`core`]: pure rules — ids, events, canonical JSON, hash chain, projection semantics;
//! - [`store`]: the database; the `EventLog` actor (single writer, group commit), chain
//!   verification and replay;
//! - [`federation`]: signing keys and signed requests, key server, notary and key resolver,
//!   the inbox pipeline (Origin actors) and outbound delivery (Destination actors);
//! - [`identity`]: polyproto ID-Certs (the server's root, actors' certificates and the one
//!   checker), accounts and sessions (local and foreign), signed messages, services;
//! - [`transparency`]: the verifiable log: checkpoints, proof reads, witnessing;
//! - [`gateway`]: Channel actors, the local fan-out of committed events;
//! - [`api`]: thin HTTP handlers; [`error`]: the one error type clients see;
//! - [`app`]: wires one instance together; [`config`]: TOML + environment configuration;
//! - [`telemetry`]: logs and the per-instance Prometheus registry;
//! - [`cluster`]: several nodes on one PostgreSQL: election, fencing, following the log.

pub mod api;
pub mod app;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod core;
pub mod error;
pub mod federation;
pub mod gateway;
pub mod identity;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transparency;
