//! polyproto identity. Built so far: the server's self-signed root ID-Cert ([`idcert`]).

pub mod idcert;
