//! Federation with other servers. Built so far: the server's signing key and Matrix signed
//! JSON ([`signing`], the only module that touches private keys) and the Matrix-format key
//! server ([`keys`]).

pub mod client;
pub mod keys;
pub mod signing;
