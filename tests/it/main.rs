//! Integration tests: the real application on port 0 with a database of its own.
//!
//! Storage tests run on SQLite by default and on PostgreSQL when
//! `SWITCHYARD_TEST_POSTGRES_URL` names a server (each test then creates a database of its
//! own there); `.ci/run` runs them both ways.

mod accounts;
mod cli;
mod cluster;
mod cluster_delivery;
mod cluster_follow;
mod cluster_process;
mod cluster_shared;
mod federation;
mod gateway;
mod helpers;
mod http;
mod idcert;
mod identity;
mod inbox;
mod keys;
mod notary;
mod p2;
mod resolver;
mod storage;
mod tls;
mod transparency;
