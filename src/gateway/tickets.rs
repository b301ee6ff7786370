//! WebSocket tickets (DESIGN §5): `POST /api/v1/auth/ws-ticket` trades a bearer token for a
//! single-use ticket valid for 30 s, so the token never appears in a URL.
//!
//! Tickets live only in memory: a restart invalidates them, which costs a client one more
//! request. Redeeming removes the ticket, so a second use fails whatever the timing.

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
    lifetime: Duration,
}

impl Tickets {
    /// Tickets valid for `lifetime` (`gateway.ticket_lifetime`, 30 s by contract).
    pub fn new(lifetime: Duration) -> Tickets {
        Tickets {
            live: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(lifetime)
                .build(),
            lifetime,
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A new ticket for the session.
    pub fn issue(&self, fid: &str, session_id: &str) -> String {
        let ticket = format!("syt_{}", hex::encode(rand::thread_rng().gen::<[u8; 24]>()));
        self.live.insert(
            ticket.clone(),
            Grant {
                fid: fid.to_owned(),
                session_id: session_id.to_owned(),
                issued: Instant::now(),
            },
        );
        ticket
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
        let tickets = Tickets::new(Duration::from_secs(30));
        let ticket = tickets.issue("alice@a.test", "s1");
        let grant = tickets.redeem(&ticket).expect("first use");
        assert_eq!(
            (grant.fid.as_str(), grant.session_id.as_str()),
            ("alice@a.test", "s1")
        );
        assert!(tickets.redeem(&ticket).is_none());
        assert!(tickets.redeem("syt_garbage").is_none());
    }
}
