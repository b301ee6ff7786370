//! polyproto identity: the server's self-signed root ID-Cert ([`idcert`]) and the history of
//! the ones it issued ([`server_certs`]).

pub mod accounts;
pub mod checker;
pub mod csr;
pub mod idcert;
pub mod server_certs;
