//! Federation with other servers: the server's signing key, Matrix signed JSON and signed
//! requests ([`signing`], the only module that touches private keys), keys of ours and of
//! others ([`keys`]), the outbound HTTP client and the fenced fetcher ([`client`]), the
//! signature-check threads shared by the inbox and identity ([`verifier`]), the inbox
//! pipeline ([`inbox`]) and outbound delivery ([`delivery`]).

pub mod client;
pub mod delivery;
pub mod inbox;
pub mod keys;
pub mod signing;
pub mod verifier;
