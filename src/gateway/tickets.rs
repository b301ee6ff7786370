//! WebSocket tickets (DESIGN §5): `POST /api/v1/auth/ws-ticket` trades a bearer token for a
//! single-use ticket valid for 30 s, so the token never appears in a URL.
//!
//! Tickets live only in memory: a restart invalidates them, which costs a client one more
//! request. Redeeming removes the ticket, so a second use fails whatever the timing. One
//! session gets at most `per_session` tickets per lifetime, so no client can crowd the others'
//! tickets out of the store.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;

/// The session a ticket was issued for: all the handshake needs, so it reads no database.
#[derive(Clone, Debug)]
pub struct Grant {
    pub fid: String,
    pub session_id: String,
    /// The session's `seq` at creation.
    pub created_seq: u64,
    issued: Instant,
}

#[derive(Clone)]
pub struct Tickets {
    live: moka::sync::Cache<String, Grant>,
    /// Sessions ended within a ticket's lifetime: their tickets are refused.
    ended: moka::sync::Cache<String, ()>,
    /// Tickets issued per session in the current window (one lifetime long).
    issued: moka::sync::Cache<String, Arc<AtomicU32>>,
    per_session: u32,
    lifetime: Duration,
}

impl Tickets {
    /// Tickets valid for `lifetime` (`gateway.ticket_lifetime`, 30 s by contract), at most
    /// `per_session` of them per session and lifetime.
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
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A new ticket for the session, unless it has had its share of this window.
    pub fn issue(&self, fid: &str, session_id: &str, created_seq: u64) -> Option<String> {
        let count = self
            .issued
            .get_with(session_id.to_owned(), || Arc::new(AtomicU32::new(0)));
        if count.fetch_add(1, Ordering::AcqRel) >= self.per_session {
            return None;
        }
        let ticket = format!("syt_{}", hex::encode(rand::thread_rng().gen::<[u8; 24]>()));
        self.live.insert(
            ticket.clone(),
            Grant {
                fid: fid.to_owned(),
                session_id: session_id.to_owned(),
                created_seq,
                issued: Instant::now(),
            },
        );
        Some(ticket)
    }

    /// The grant of `ticket` if it is live; it cannot be redeemed again.
    pub fn redeem(&self, ticket: &str) -> Option<Grant> {
        self.live
            .remove(ticket)
            .filter(|grant| grant.issued.elapsed() <= self.lifetime)
            .filter(|grant| !self.ended.contains_key(&grant.session_id))
    }

    /// Whether the session ended within a ticket's lifetime (a socket that was being set up
    /// while it ended checks this after it registers).
    pub fn is_ended(&self, session_id: &str) -> bool {
        self.ended.contains_key(session_id)
    }

    /// The session ended: tickets issued to it are refused from now on.
    pub fn session_ended(&self, session_id: &str) {
        self.ended.insert(session_id.to_owned(), ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_redeemed_once() {
        let tickets = Tickets::new(Duration::from_secs(30), 2);
        let ticket = tickets.issue("alice@a.test", "s1", 7).expect("issued");
        let grant = tickets.redeem(&ticket).expect("first use");
        assert_eq!(
            (
                grant.fid.as_str(),
                grant.session_id.as_str(),
                grant.created_seq
            ),
            ("alice@a.test", "s1", 7)
        );
        assert!(tickets.redeem(&ticket).is_none());
        assert!(tickets.redeem("syt_garbage").is_none());
        // Two per session and window; other sessions are not affected.
        assert!(tickets.issue("alice@a.test", "s1", 7).is_some());
        assert!(tickets.issue("alice@a.test", "s1", 7).is_none());
        assert!(tickets.issue("bob@a.test", "s2", 9).is_some());
    }

    #[test]
    fn an_ended_session_s_tickets_are_refused() {
        let tickets = Tickets::new(Duration::from_secs(30), 4);
        let ticket = tickets.issue("alice@a.test", "s1", 1).expect("issued");
        tickets.session_ended("s1");
        assert!(tickets.redeem(&ticket).is_none());
        let other = tickets.issue("bob@a.test", "s2", 2).expect("issued");
        assert!(tickets.redeem(&other).is_some());
    }
}
