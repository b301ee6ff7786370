//! Key rotation, crash-safe with the log as the point of decision.
//!
//! ```text
//!  1. new key → <key file>.next        (mode 0600, fsynced)
//!  2. append server.key_rotated         (event id "key-rotation:<new key id>"; the old public
//!                                        key and its expired_ts go to retired_server_keys)
//!  3. rename <key file>.next → <key file>
//!  4. swap the key in memory; prepared key responses rebuild
//! ```
//! A crash between 1 and 2 leaves a `.next` whose event is not in the log: it is deleted at
//! the next start. A crash between 2 and 3 leaves one whose event is: the rename is finished
//! at the next start. Either way the key file and the log agree.

use serde_json::json;

use crate::clock::now_ms;
use crate::core::event::NewEvent;
use crate::federation::signing::{KeyFileError, KeyRing, RetiredKey, ServerKey};
use crate::store::{AppendError, EventLogHandle, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("cannot record the rotation in the log: {0}")]
    Append(#[from] AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot finish the rotation (rename {path}): {source}")]
    Rename {
        path: String,
        source: std::io::Error,
    },
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub new_key_id: String,
    pub old_key_id: String,
    pub expired_ts: i64,
}

fn rotation_event_id(new_key_id: &str) -> String {
    format!("key-rotation:{new_key_id}")
}

fn finish(pending: &std::path::Path, path: &std::path::Path) -> Result<(), RotationError> {
    std::fs::rename(pending, path).map_err(|source| RotationError::Rename {
        path: pending.display().to_string(),
        source,
    })
}

/// Rotates the server key of `ring` (see the module doc).
pub async fn rotate(
    ring: &KeyRing,
    log: &EventLogHandle,
    store: &Store,
    server_name: &str,
) -> Result<Rotated, RotationError> {
    let _one_at_a_time = ring.rotating.lock().await;
    let old = ring.current();
    let new = ServerKey::generate();
    let pending = KeyRing::pending_path(ring.path());
    new.write(&pending)?;
    let expired_ts = now_ms();
    let event = NewEvent {
        event_id: rotation_event_id(&new.key_id()),
        origin: server_name.to_owned(),
        event_type: "server.key_rotated".into(),
        sender: None,
        channel: None,
        origin_ts: expired_ts,
        content: json!({
            "old_key_id": old.key_id(),
            "old_key": old.public_b64(),
            "expired_ts": expired_ts,
            "new_key_id": new.key_id(),
            "new_key": new.public_b64(),
        }),
    };
    let event_id = event.event_id.clone();
    match log.append(vec![event]).await {
        Ok(_) => {}
        // The commit's outcome is unknown: ask the log. If even that fails, the pending file
        // stays and the next start decides (see `open_key_ring`).
        Err(error @ AppendError::Storage(_)) => match store.has_event(server_name, &event_id).await
        {
            Ok(true) => {}
            Ok(false) => {
                let _ = std::fs::remove_file(&pending);
                return Err(error.into());
            }
            Err(_) => return Err(error.into()),
        },
        Err(error) => {
            let _ = std::fs::remove_file(&pending);
            return Err(error.into());
        }
    }
    // From here on the log says the key rotated, so memory follows it even if the rename
    // fails; the pending file then stays and the next start finishes the rename.
    let renamed = finish(&pending, ring.path());
    let rotated = Rotated {
        new_key_id: new.key_id(),
        old_key_id: old.key_id(),
        expired_ts,
    };
    ring.install(
        new,
        RetiredKey {
            key_id: old.key_id(),
            public_key: old.public_b64(),
            expired_ts,
        },
    );
    renamed?;
    tracing::info!(new_key_id = %rotated.new_key_id, old_key_id = %rotated.old_key_id, "server key rotated");
    Ok(rotated)
}

/// Finishes or discards a rotation a crash interrupted, then loads (or creates) the key
/// ring from the key file and the retired keys of the log.
pub async fn open_key_ring(
    path: &std::path::Path,
    server_name: &str,
    store: &Store,
) -> Result<KeyRing, RotationError> {
    let pending = KeyRing::pending_path(path);
    if pending.exists() {
        let next = ServerKey::load(&pending)?;
        if store
            .has_event(server_name, &rotation_event_id(&next.key_id()))
            .await?
        {
            tracing::warn!(key_id = %next.key_id(), "finishing a key rotation interrupted after it was recorded");
            finish(&pending, path)?;
        } else {
            tracing::warn!(key_id = %next.key_id(), "discarding a key rotation interrupted before it was recorded");
            let _ = std::fs::remove_file(&pending);
        }
    }
    let current = ServerKey::load_or_generate(path)?;
    let retired = store
        .retired_server_keys()
        .await?
        .into_iter()
        .map(|k| RetiredKey {
            key_id: k.key_id,
            public_key: k.public_key,
            expired_ts: k.expired_ts,
        })
        .collect();
    Ok(KeyRing::new(path, current, retired))
}
