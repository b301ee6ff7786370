//! Server keys as other servers see them: the Matrix-format key server response.

pub mod notary;
pub mod resolver;
pub mod rotation;
pub mod server;
