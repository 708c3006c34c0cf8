//! Fencing tokens: proof of leadership attached to every write of a leader.

use etcd_client::{Compare, CompareOp};

use crate::error::Error;

/// The leader's election key and the revision that created it.
///
/// A write guarded by `create_revision(election_key) == revision` succeeds only while this
/// exact campaign is still the leader: once the key's lease expires or it resigns, the key
/// is gone (or re-created with another revision) and every fenced write fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The election key owned by the leader.
    election_key: String,
    /// The create_revision of that key when leadership was won.
    revision: i64,
}

impl Fence {
    /// A fence for the election key `election_key` created at `revision`.
    pub fn new(election_key: impl Into<String>, revision: i64) -> Self {
        Self {
            election_key: election_key.into(),
            revision,
        }
    }

    /// The election key.
    pub fn election_key(&self) -> &str {
        &self.election_key
    }

    /// The create_revision of the election key.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The transaction guard.
    pub fn compare(&self) -> Compare {
        Compare::create_revision(self.election_key.as_str(), CompareOp::Equal, self.revision)
    }

    pub(crate) fn fenced_out(&self) -> Error {
        Error::FencedOut {
            election_key: self.election_key.clone(),
            revision: self.revision,
        }
    }
}
