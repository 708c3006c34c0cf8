//! Errors of the etcd layer.

/// What went wrong talking to etcd or reading what it holds.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd could not be reached or answered with an error.
    #[error("etcd {op}: {source}")]
    Etcd {
        /// The operation that failed, e.g. "get /pm/v1/pools/web/config".
        op: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// A fenced write was refused: the writer's election key is gone or was re-created,
    /// so it is no longer the leader and must stop acting.
    #[error("fenced out: election key {election_key} no longer has create_revision {revision}")]
    FencedOut {
        /// The writer's election key.
        election_key: String,
        /// The create_revision the writer held.
        revision: i64,
    },
    /// A compare-and-swap failed: the key changed since it was read.
    #[error("conflict: {key} changed since revision {expected} (now {actual})")]
    Conflict {
        /// The key written.
        key: String,
        /// The mod_revision the writer expected (0: absent).
        expected: i64,
        /// The mod_revision found (0: absent).
        actual: i64,
    },
    /// A guarded transaction was refused by one of its extra conditions (the fence held).
    #[error("not written: {what} changed meanwhile")]
    GuardFailed {
        /// What the guard protected.
        what: String,
    },
    /// A value stored under a key is not a valid protobuf message of the expected type.
    #[error("cannot decode the value of {key} as {type_name}: {source}")]
    Decode {
        /// The key whose value is bad.
        key: String,
        /// The expected message type.
        type_name: &'static str,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// A key is not valid UTF-8 or does not fit pm's keyspace.
    #[error("malformed key {key:?}: {reason}")]
    MalformedKey {
        /// The key, lossily decoded.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A name (pool, zone, instance, agent) cannot be used in a key.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// The kind of name: "pool", "zone", ...
        what: &'static str,
        /// The name given.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// Connection settings are unusable (bad endpoint, unreadable TLS file).
    #[error("etcd configuration: {0}")]
    Config(String),
    /// etcd cancelled a watch, saying why (e.g. "etcdserver: permission denied").
    #[error("watch of {range} cancelled by etcd: {reason}")]
    WatchCancelled {
        /// The watched range.
        range: String,
        /// etcd's cancel reason.
        reason: String,
    },
    /// The lease backing a session or leadership was lost.
    #[error("lease {0:x} lost")]
    LeaseLost(i64),
    /// The operation was cancelled by its token.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Wraps a client error with the operation it came from.
    pub(crate) fn etcd(op: impl Into<String>, source: etcd_client::Error) -> Self {
        Self::Etcd {
            op: op.into(),
            source,
        }
    }

    /// True when the writer lost its leadership; it must stop acting as leader.
    pub fn is_fenced_out(&self) -> bool {
        matches!(self, Self::FencedOut { .. })
    }
}

/// Result of the etcd layer.
pub type Result<T> = std::result::Result<T, Error>;
