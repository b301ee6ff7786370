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

/// The session a ticket was issued for.
#[derive(Clone, Debug)]
pub struct Grant {
    pub fid: String,
    pub session_id: String,
    issued: Instant,
}

pub struct Tickets {
    live: moka::sync::Cache<String, Grant>,
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
            per_session: per_session.max(1),
            lifetime,
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A new ticket for the session, unless it has had its share of this window.
    pub fn issue(&self, fid: &str, session_id: &str) -> Option<String> {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_redeemed_once() {
        let tickets = Tickets::new(Duration::from_secs(30), 2);
        let ticket = tickets.issue("alice@a.test", "s1").expect("issued");
        let grant = tickets.redeem(&ticket).expect("first use");
        assert_eq!(
            (grant.fid.as_str(), grant.session_id.as_str()),
            ("alice@a.test", "s1")
        );
        assert!(tickets.redeem(&ticket).is_none());
        assert!(tickets.redeem("syt_garbage").is_none());
        // Two per session and window; other sessions are not affected.
        assert!(tickets.issue("alice@a.test", "s1").is_some());
        assert!(tickets.issue("alice@a.test", "s1").is_none());
        assert!(tickets.issue("bob@a.test", "s2").is_some());
    }
}
