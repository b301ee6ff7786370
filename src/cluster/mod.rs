//! Several nodes on one PostgreSQL (DESIGN §7). PostgreSQL is the only coordination engine:
//! an advisory lock on the leader's writer connection, a lease row the leader renews, an epoch
//! every commit is fenced by, `NOTIFY` from the leader once per group commit.
//!
//! - [`Role`]: what this node is now (one node: `Single`); the log handle publishes it
//!   (`EventLogHandle::role`), so whatever must run on one node only (the checkpoint signer,
//!   the witness pusher) follows it.
//! - [`NodeIdentity`]: who this node is to the others.

use std::time::Duration;

pub mod forward;
mod metrics;
pub mod node;

pub use self::metrics::ClusterMetrics;
pub use self::node::{LeaderSeen, Node};

/// PostgreSQL's clock in ms since the epoch: every lease is judged on the database's clock,
/// never on a node's, so nodes whose clocks differ still agree on who holds what.
pub const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Who this node is to the other nodes of the cluster.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    /// `cluster.node_id` (or the host name and a random suffix).
    pub node_id: String,
    /// Where the other nodes reach this one (`cluster.advertise_url`).
    pub advertise_url: String,
    /// `cluster.lease_ttl`: leader and delivery leases last this long unrenewed.
    pub lease_ttl: Duration,
}

/// What this node is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not in a cluster: the one node writes and does everything.
    Single,
    /// The elected writer of the cluster, fenced by `epoch`.
    Leader { epoch: u64 },
    /// Follows the log; forwards appends to the leader.
    Follower,
}

impl Role {
    /// Whether this node commits to the log (and so does what only the writer does).
    pub fn writes(self) -> bool {
        matches!(self, Role::Single | Role::Leader { .. })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Leader { .. } => "leader",
            Role::Follower => "follower",
        }
    }
}

/// A node's view of its role, current and changing.
pub type RoleWatch = tokio::sync::watch::Receiver<Role>;

impl NodeIdentity {
    /// This node's identity when `cluster.enabled`, else `None`. An empty `node_id` becomes
    /// the host name and a random suffix; an empty `advertise_url` is `http://` + the bound
    /// address (`port`, as the listener got it; a bind on every address needs the URL).
    pub fn from_config(config: &crate::config::Config, port: u16) -> Option<NodeIdentity> {
        let cluster = &config.cluster;
        if !cluster.enabled {
            return None;
        }
        let node_id = match cluster.node_id.is_empty() {
            false => cluster.node_id.clone(),
            true => {
                let host = std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "node".into());
                format!("{host}-{:08x}", rand::random::<u32>())
            }
        };
        let advertise_url = match cluster.advertise_url.is_empty() {
            false => cluster.advertise_url.trim_end_matches('/').to_owned(),
            true => {
                // `Config::validate` refuses an unspecified address here.
                let ip = config
                    .server
                    .bind
                    .rsplit_once(':')
                    .map_or("127.0.0.1", |(ip, _)| ip);
                format!("http://{ip}:{port}")
            }
        };
        Some(NodeIdentity {
            node_id,
            advertise_url,
            lease_ttl: cluster.lease_ttl,
        })
    }
}
