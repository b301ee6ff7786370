//! WebSocket tickets (DESIGN §5): `POST /api/v1/auth/ws-ticket` trades a bearer token for a
//! single-use ticket valid for 30 s, so the token never appears in a URL.
//!
//! One node keeps tickets in memory: a restart invalidates them, which costs a client one
//! more request. Redeeming removes the ticket, so a second use fails whatever the timing. One
//! session gets at most `per_session` tickets per lifetime, so no client can crowd the others'
//! tickets out of the store.
//!
//! A cluster (DESIGN §7) keeps them in `cluster_tickets`, because the load balancer may send
//! the upgrade to another node than the one that issued the ticket: stored as a SHA-256 (a
//! database reader learns no live ticket), redeemed by one `DELETE … RETURNING` (exactly one
//! node can redeem it), expiring on the database's clock, the expired rows deleted every
//! minute. The per-session limit counts per node (the same window as on one node) and, in
//! the table, caps a session's live tickets at `per_session` for the whole cluster. An ended
//! session's rows are deleted, and each node also refuses its tickets from memory.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::store::shared::TicketRow;
use crate::store::{Store, StoreError};

/// How often a cluster node deletes expired ticket rows.
const TIDY_INTERVAL: Duration = Duration::from_secs(60);

/// The session a ticket was issued for: all the handshake needs, so it reads no database
/// (one node; a cluster reads the ticket's row and nothing else).
#[derive(Clone, Debug)]
pub struct Grant {
    pub fid: String,
    pub session_id: String,
    /// The session's `seq` at creation.
    pub created_seq: u64,
}

#[derive(Clone)]
pub struct Tickets {
    /// One node: the live tickets and when each was issued.
    live: moka::sync::Cache<String, (Grant, Instant)>,
    /// Sessions ended within a ticket's lifetime: their tickets are refused.
    ended: moka::sync::Cache<String, ()>,
    /// Tickets issued per session in the current window (one lifetime long).
    issued: moka::sync::Cache<String, Arc<AtomicU32>>,
    per_session: u32,
    lifetime: Duration,
    /// A cluster: the table every node issues into and redeems from.
    shared: Option<Arc<Store>>,
}

impl Tickets {
    /// Tickets valid for `lifetime` (`gateway.ticket_lifetime`, 30 s by contract), at most
    /// `per_session` of them per session and lifetime, kept in memory (one node).
    pub fn new(lifetime: Duration, per_session: u32) -> Tickets {
        Tickets {
            live: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(lifetime)
                .build(),
            issued: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(lifetime)
                .build(),
            ended: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(lifetime)
                .build(),
            per_session: per_session.max(1),
            lifetime,
            shared: None,
        }
    }

    /// The tickets of a cluster node, kept in `cluster_tickets` so that any node redeems
    /// them. Starts the minute's tidy-up of expired rows, which stops with the last clone.
    pub fn in_cluster(lifetime: Duration, per_session: u32, store: Store) -> Tickets {
        let store = Arc::new(store);
        let tickets = Tickets {
            shared: Some(store.clone()),
            ..Tickets::new(lifetime, per_session)
        };
        let weak: Weak<Store> = Arc::downgrade(&store);
        actix_web::rt::spawn(async move {
            let mut tick = actix_web::rt::time::interval(TIDY_INTERVAL);
            // The first tick is at once: nothing has expired yet.
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { break };
                if let Err(error) = store.delete_expired_tickets().await {
                    tracing::warn!(%error, "cannot delete expired WebSocket tickets");
                }
            }
        });
        tickets
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A new ticket for the session, unless it has had its share of this window (`None`).
    /// Fails only in a cluster, when the table cannot be written.
    pub async fn issue(
        &self,
        fid: &str,
        session_id: &str,
        created_seq: u64,
    ) -> Result<Option<String>, StoreError> {
        let count = self
            .issued
            .get_with(session_id.to_owned(), || Arc::new(AtomicU32::new(0)));
        if count.fetch_add(1, Ordering::AcqRel) >= self.per_session {
            return Ok(None);
        }
        let ticket = format!("syt_{}", hex::encode(rand::thread_rng().gen::<[u8; 24]>()));
        let grant = Grant {
            fid: fid.to_owned(),
            session_id: session_id.to_owned(),
            created_seq,
        };
        match &self.shared {
            None => {
                self.live.insert(ticket.clone(), (grant, Instant::now()));
                Ok(Some(ticket))
            }
            Some(store) => {
                let row = TicketRow {
                    fid: grant.fid,
                    session_id: grant.session_id,
                    created_seq,
                };
                let stored = store
                    .insert_cluster_ticket(&hash(&ticket), &row, self.lifetime, self.per_session)
                    .await?;
                Ok(stored.then_some(ticket))
            }
        }
    }

    /// The grant of `ticket` if it is live; it cannot be redeemed again, on any node. Fails
    /// only in a cluster, when the table cannot be reached (the ticket may or may not have
    /// been used up).
    pub async fn redeem(&self, ticket: &str) -> Result<Option<Grant>, StoreError> {
        let grant = match &self.shared {
            None => self
                .live
                .remove(ticket)
                .filter(|(_, issued)| issued.elapsed() <= self.lifetime)
                .map(|(grant, _)| grant),
            Some(store) => {
                // Not a ticket we could have issued: no database round trip.
                if !ticket.starts_with("syt_") || ticket.len() > 64 {
                    return Ok(None);
                }
                store
                    .redeem_cluster_ticket(&hash(ticket))
                    .await?
                    .map(|row| Grant {
                        fid: row.fid,
                        session_id: row.session_id,
                        created_seq: row.created_seq,
                    })
            }
        };
        Ok(grant.filter(|grant| !self.ended.contains_key(&grant.session_id)))
    }

    /// Whether the session ended within a ticket's lifetime (a socket that was being set up
    /// while it ended checks this after it registers).
    pub fn is_ended(&self, session_id: &str) -> bool {
        self.ended.contains_key(session_id)
    }

    /// The session ended: tickets issued to it are refused from now on (in a cluster, its
    /// rows are deleted too, in the background, so no node redeems them).
    pub fn session_ended(&self, session_id: &str) {
        self.ended.insert(session_id.to_owned(), ());
        if let Some(store) = &self.shared {
            let (store, session_id) = (store.clone(), session_id.to_owned());
            actix_web::rt::spawn(async move {
                if let Err(error) = store.delete_session_tickets(&session_id).await {
                    tracing::warn!(%error, "cannot delete an ended session's WebSocket tickets");
                }
            });
        }
    }
}

/// What the table keeps of a ticket: its SHA-256, lowercase hex.
fn hash(ticket: &str) -> String {
    hex::encode(Sha256::digest(ticket.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_ticket_is_redeemed_once() {
        let tickets = Tickets::new(Duration::from_secs(30), 2);
        let ticket = tickets
            .issue("alice@a.test", "s1", 7)
            .await
            .expect("memory")
            .expect("issued");
        let grant = tickets
            .redeem(&ticket)
            .await
            .expect("memory")
            .expect("first use");
        assert_eq!(
            (
                grant.fid.as_str(),
                grant.session_id.as_str(),
                grant.created_seq
            ),
            ("alice@a.test", "s1", 7)
        );
        assert!(tickets.redeem(&ticket).await.expect("memory").is_none());
        assert!(tickets
            .redeem("syt_garbage")
            .await
            .expect("memory")
            .is_none());
        // Two per session and window; other sessions are not affected.
        let issue = |fid: &'static str, session: &'static str| {
            let tickets = tickets.clone();
            async move { tickets.issue(fid, session, 7).await.expect("memory") }
        };
        assert!(issue("alice@a.test", "s1").await.is_some());
        assert!(issue("alice@a.test", "s1").await.is_none());
        assert!(issue("bob@a.test", "s2").await.is_some());
    }

    #[actix_web::test]
    async fn an_ended_session_s_tickets_are_refused() {
        let tickets = Tickets::new(Duration::from_secs(30), 4);
        let ticket = tickets
            .issue("alice@a.test", "s1", 1)
            .await
            .expect("memory")
            .expect("issued");
        tickets.session_ended("s1");
        assert!(tickets.redeem(&ticket).await.expect("memory").is_none());
        let other = tickets
            .issue("bob@a.test", "s2", 2)
            .await
            .expect("memory")
            .expect("issued");
        assert!(tickets.redeem(&other).await.expect("memory").is_some());
    }

    #[test]
    fn the_table_keeps_a_hash_of_the_ticket() {
        let stored = hash("syt_abc");
        assert_eq!(stored.len(), 64);
        assert_ne!(stored, "syt_abc");
        assert_eq!(stored, hash("syt_abc"));
    }
}
