//! Stored keys and watch events as etcd would hand them out, for the tests of code that
//! follows the keyspace (the `testing` feature).

use crate::watch::{StoredKey, WatchEvent};

/// `key` holding `value`, written (and created) at `revision`, without a lease.
pub fn stored(key: String, value: Vec<u8>, revision: i64) -> StoredKey {
    StoredKey {
        key,
        value,
        mod_revision: revision,
        create_revision: revision,
        lease: 0,
    }
}

/// The watch event of `key` written with `value` at `revision`.
pub fn put(key: String, value: Vec<u8>, revision: i64) -> WatchEvent {
    WatchEvent::Put(stored(key, value, revision))
}

/// The watch event of `key` deleted at `revision`.
pub fn delete(key: String, revision: i64) -> WatchEvent {
    WatchEvent::Delete {
        key,
        mod_revision: revision,
    }
}
