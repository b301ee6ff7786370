//! Local accounts and sessions (DESIGN §5): argon2id password hashes, bearer tokens of which
//! only the SHA-256 is kept, and both recorded as log events (`account.registered`,
//! `session.created`) so that `replay` rebuilds them.
//!
//! A username is taken by the first `account.registered` with event id `account:<username>`:
//! the log's unique `(origin, event_id)` index decides between two concurrent registrations.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::core::event::NewEvent;
use crate::core::ids;
use crate::store::{AppendError, AppendOutcome, EventLogHandle, Store, StoreError};

/// A session's secrets, as answered once to the client.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub fid: String,
    pub session_id: String,
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the username must be 1..64 characters of a-z, 0-9, '.', '_' and '-'")]
    BadUsername,
    #[error("the password must be 8..1024 characters")]
    BadPassword,
    #[error("the username {0} is taken")]
    Taken(String),
    #[error("wrong username or password")]
    BadCredentials,
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("too many password checks at once; retry shortly")]
    Busy,
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The SHA-256 of a bearer token, lowercase hex: what is stored and looked up.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn check_username(username: &str) -> Result<(), AccountError> {
    ids::parse_fid(&format!("{username}@x"))
        .map(|_| ())
        .ok_or(AccountError::BadUsername)
}

fn check_password(password: &str) -> Result<(), AccountError> {
    if (8..=1024).contains(&password.chars().count()) {
        Ok(())
    } else {
        Err(AccountError::BadPassword)
    }
}

/// argon2id's cost as OWASP's password storage cheat sheet sets its floor (and the argon2
/// crate's default): 19 MiB, 2 passes, 1 lane.
pub const OWASP_MEMORY_KIB: u32 = 19_456;
pub const OWASP_PASSES: u32 = 2;

/// The one owner of password hashing: argon2id at the configured cost
/// (`server.password_hash_memory_kib`, `server.password_hash_passes`), and how many hashes run
/// at once. Each run holds its memory cost, so an unbounded number of concurrent registrations
/// or logins would be a memory attack; the permits are sized to the CPU count. Verification
/// takes the cost from the stored hash, so a changed cost applies to new hashes only.
pub struct Hashers {
    permits: tokio::sync::Semaphore,
    params: argon2::Params,
    /// A hash at the configured cost to verify against when the username does not exist,
    /// so that a login for an unknown user takes as long as one with a wrong password.
    dummy: String,
}

impl Hashers {
    pub fn new(
        permits: usize,
        memory_kib: u32,
        passes: u32,
    ) -> Result<Hashers, (&'static str, String)> {
        let params = Hashers::params(memory_kib, passes)?;
        if memory_kib < OWASP_MEMORY_KIB || passes < OWASP_PASSES {
            tracing::warn!(
                memory_kib,
                passes,
                "password hashes are cheaper than OWASP's floor (19456 KiB, 2 passes): for benchmarks and tests only"
            );
        }
        let fault =
            |e: argon2::password_hash::Error| ("server.password_hash_memory_kib", e.to_string());
        let salt = SaltString::encode_b64(&rand::thread_rng().gen::<[u8; 16]>()).map_err(fault)?;
        let dummy = argon2_with(params.clone())
            .hash_password(b"no such account", &salt)
            .map_err(fault)?
            .to_string();
        Ok(Hashers {
            permits: tokio::sync::Semaphore::new(permits.max(1)),
            params,
            dummy,
        })
    }

    /// The argon2id parameters for a cost, or which key is out of range and why (memory
    /// 8 KiB..=1 GiB, each of the CPU-count hashes at once holds it; passes 1..=16).
    pub fn params(memory_kib: u32, passes: u32) -> Result<argon2::Params, (&'static str, String)> {
        if !(1..=16).contains(&passes) {
            return Err((
                "server.password_hash_passes",
                format!("{passes}: must be 1..=16"),
            ));
        }
        if !(8..=1024 * 1024).contains(&memory_kib) {
            return Err((
                "server.password_hash_memory_kib",
                format!("{memory_kib} KiB: must be 8..=1048576"),
            ));
        }
        argon2::Params::new(memory_kib, passes, 1, None)
            .map_err(|e| ("server.password_hash_memory_kib", e.to_string()))
    }

    /// Waits up to two seconds for a turn; past that the server is overloaded.
    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, AccountError> {
        match tokio::time::timeout(std::time::Duration::from_secs(2), self.permits.acquire()).await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(AccountError::Busy),
        }
    }

    /// argon2id at the configured cost, off the async threads.
    async fn hash(&self, password: String) -> Result<String, AccountError> {
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let salt: [u8; 16] = rand::thread_rng().gen();
            let salt =
                SaltString::encode_b64(&salt).map_err(|e| AccountError::Hash(e.to_string()))?;
            argon2_with(params)
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| AccountError::Hash(e.to_string()))
        })
        .await
        .map_err(|e| AccountError::Hash(e.to_string()))?
    }
}

fn argon2_with(params: argon2::Params) -> Argon2<'static> {
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Checks `password` against a stored hash, with the cost the hash names.
async fn verify_password(hash: String, password: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Creates a session for `fid`: a random id and token, the token's hash in the log.
async fn open_session(
    log: &EventLogHandle,
    server_name: &str,
    fid: &str,
) -> Result<NewSession, AccountError> {
    let (session_id, token) = {
        let mut rng = rand::thread_rng();
        let session: [u8; 16] = rng.gen();
        let token: [u8; 32] = rng.gen();
        (hex::encode(session), format!("sy_{}", hex::encode(token)))
    };
    log.append(vec![NewEvent {
        event_id: format!("session:{session_id}"),
        origin: server_name.to_owned(),
        event_type: "session.created".into(),
        sender: Some(fid.to_owned()),
        channel: None,
        origin_ts: now_ms(),
        content: json!({"session_id": session_id, "token_hash": token_hash(&token)}),
    }])
    .await?;
    Ok(NewSession {
        fid: fid.to_owned(),
        session_id,
        token,
    })
}

/// Ends `session_id` of `fid`: its token stops working.
pub async fn end_session(
    log: &EventLogHandle,
    server_name: &str,
    fid: &str,
    session_id: &str,
) -> Result<(), AccountError> {
    log.append(vec![NewEvent {
        event_id: format!("session-end:{session_id}"),
        origin: server_name.to_owned(),
        event_type: "session.deleted".into(),
        sender: Some(fid.to_owned()),
        channel: None,
        origin_ts: now_ms(),
        content: json!({"session_id": session_id}),
    }])
    .await?;
    Ok(())
}

/// Registers `username` and opens its first session.
pub async fn register(
    hashers: &Hashers,
    log: &EventLogHandle,
    server_name: &str,
    username: &str,
    password: &str,
) -> Result<NewSession, AccountError> {
    check_username(username)?;
    check_password(password)?;
    let fid = format!("{username}@{server_name}");
    let permit = hashers.permit().await?;
    let password_hash = hashers.hash(password.to_owned()).await?;
    drop(permit);
    let outcome = log
        .append(vec![NewEvent {
            event_id: format!("account:{username}"),
            origin: server_name.to_owned(),
            event_type: "account.registered".into(),
            sender: Some(fid.clone()),
            channel: None,
            origin_ts: now_ms(),
            content: json!({"username": username, "password_hash": password_hash}),
        }])
        .await?;
    if matches!(outcome[..], [AppendOutcome::Duplicate { .. }]) {
        return Err(AccountError::Taken(username.to_owned()));
    }
    open_session(log, server_name, &fid).await
}

/// Checks `username`'s password and opens a new session.
pub async fn login(
    hashers: &Hashers,
    store: &Store,
    log: &EventLogHandle,
    server_name: &str,
    username: &str,
    password: &str,
) -> Result<NewSession, AccountError> {
    let account = match check_username(username) {
        Ok(()) => store.account(username).await?,
        Err(_) => None,
    };
    let hash = account
        .as_ref()
        .map_or_else(|| hashers.dummy.clone(), |a| a.password_hash.clone());
    let permit = hashers.permit().await?;
    let valid = verify_password(hash, password.to_owned()).await;
    drop(permit);
    match account {
        Some(account) if valid => open_session(log, server_name, &account.fid).await,
        _ => Err(AccountError::BadCredentials),
    }
}

type PerAccount = governor::RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    governor::clock::DefaultClock,
    governor::middleware::NoOpMiddleware,
>;

/// The sensitive-action check (DESIGN §4.5): `X-P2-Sensitive-Solution` carries the account's
/// password (the polyproto spec allows one). Checked with argon2 like a login, under the same
/// bound on hashes at once, and at most 10 times a minute per account.
pub struct SensitiveActions {
    per_account: PerAccount,
}

impl Default for SensitiveActions {
    fn default() -> Self {
        let quota = governor::Quota::per_minute(
            std::num::NonZeroU32::new(10).unwrap_or(std::num::NonZeroU32::MIN),
        );
        SensitiveActions {
            per_account: governor::RateLimiter::keyed(quota),
        }
    }
}

impl SensitiveActions {
    /// Checks `solution` for the local actor `fid`.
    pub async fn check(
        &self,
        hashers: &Hashers,
        store: &Store,
        fid: &str,
        solution: Option<&str>,
    ) -> Result<(), super::IdentityError> {
        use super::IdentityError;
        let Some(solution) = solution else {
            return Err(IdentityError::Sensitive(
                "this is a sensitive action: send X-P2-Sensitive-Solution: <your password>".into(),
            ));
        };
        if let Err(not_until) = self.per_account.check_key(&fid.to_owned()) {
            use governor::clock::Clock as _;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            return Err(IdentityError::Limited {
                message: "too many sensitive-action attempts for this account".into(),
                retry_after: wait.as_secs_f64().ceil() as u64,
            });
        }
        let account = match ids::parse_fid(fid) {
            Some((local, _)) => store.account(local).await?,
            None => None,
        };
        let Some(account) = account.filter(|a| a.fid == fid) else {
            return Err(IdentityError::Sensitive(
                "only an account of this server has a password to confirm a sensitive action"
                    .into(),
            ));
        };
        let permit = hashers
            .permit()
            .await
            .map_err(|_| IdentityError::HomeUnavailable {
                message: "too many password checks at once; retry shortly".into(),
                retry_after: 1,
            })?;
        let valid = verify_password(account.password_hash, solution.to_owned()).await;
        drop(permit);
        if valid {
            Ok(())
        } else {
            Err(IdentityError::Sensitive(
                "X-P2-Sensitive-Solution is not this account's password".into(),
            ))
        }
    }

    /// Forgets the rate state of quiet accounts.
    pub fn tidy(&self) {
        self.per_account.retain_recent();
        self.per_account.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn passwords_hash_and_verify() {
        let hashers = Hashers::new(1, OWASP_MEMORY_KIB, OWASP_PASSES).expect("the default cost");
        let hash = hashers.hash("correct horse".into()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password(hash.clone(), "correct horse".into()).await);
        assert!(!verify_password(hash, "wrong horse".into()).await);
        // The dummy hash has the configured cost, so unknown users cost a real verification
        // as long as a known one's.
        assert!(hashers.dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!verify_password(hashers.dummy.clone(), "anything".into()).await);
        // A cheaper configured cost applies to new hashes; verification reads the cost from
        // the hash, so both kinds verify.
        let cheap = Hashers::new(1, 8, 1).expect("the least cost");
        let hash = cheap.hash("correct horse".into()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{hash}");
        assert!(verify_password(hash, "correct horse".into()).await);
        assert_eq!(
            Hashers::params(7, 1).map_err(|e| e.0).err(),
            Some("server.password_hash_memory_kib")
        );
        assert_eq!(
            Hashers::params(8, 0).map_err(|e| e.0).err(),
            Some("server.password_hash_passes")
        );
    }

    #[test]
    fn tokens_are_stored_as_sha256() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(check_username("bob.smith-2").is_ok());
        assert!(check_username("Bob").is_err());
        assert!(check_password("short").is_err());
    }
}
