//! The event log against a real database (SQLite, or PostgreSQL in CI's second pass).

mod append;
mod crash;
mod replay_verify;
