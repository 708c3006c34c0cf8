//! What can go wrong in a pmctl command, and the exit code each maps to.

use std::time::Duration;

use pm_pool::Problem;

/// Exit code of a successful command.
pub const EXIT_OK: i32 = 0;
/// Exit code of a command that failed: etcd, a bad config, a refused change.
pub const EXIT_ERROR: i32 = 1;
/// Exit code of a command line that does not parse (clap's own code for usage errors).
pub const EXIT_USAGE: i32 = 2;

/// A failed pmctl command. Every variant exits with [`EXIT_ERROR`]; usage errors never get
/// here, clap reports them with [`EXIT_USAGE`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd answered with an error, or a setting of the etcd connection is unusable.
    #[error(transparent)]
    Etcd(#[from] pm_etcd::Error),
    /// No etcd endpoint answered in time.
    #[error("cannot reach etcd at {endpoints} within {bound:?}: {reason} (is etcd running? set --etcd or PM_ETCD)")]
    Unreachable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// How long pmctl waited.
        bound: Duration,
        /// The last error seen, or "no answer".
        reason: String,
    },
    /// The pool config file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file named with `-f` (`-` for stdin).
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The pool config is not a document pmctl can parse (syntax error, wrong encoding).
    #[error("{path}: {message}")]
    Syntax {
        /// The file named with `-f`.
        path: String,
        /// What the parser said, with line and column when it knows them.
        message: String,
    },
    /// The pool config parsed but has problems; each names its field.
    #[error("{path}: the pool config has {count} problem(s); nothing was written:\n{list}", count = problems.len(), list = Problem::list(problems))]
    InvalidConfig {
        /// The file named with `-f`.
        path: String,
        /// Every problem found: unknown fields first, then each field's checks.
        problems: Vec<Problem>,
    },
    /// prevmtable's config or hook scripts cannot be imported; each problem names the
    /// metadata attribute, field or file it comes from.
    #[error("cannot import prevmtable's config from project {project:?}; nothing was written:\n{list}", list = Problem::list(problems))]
    Import {
        /// The project named with `--project`.
        project: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// The Compute API refused or failed a call.
    #[error("cannot read project {project:?} through the Compute API: {source}")]
    Gce {
        /// The project named with `--project`.
        project: String,
        /// GCE's error.
        #[source]
        source: Box<pm_gce::error::GceError>,
    },
    /// The pool has no config key.
    #[error("pool {pool:?} does not exist (no config; create it with `pmctl config set {pool} -f FILE`)")]
    NoSuchPool {
        /// The pool named on the command line.
        pool: String,
    },
    /// A compare-and-swap write lost against a concurrent writer.
    #[error("the config of pool {pool:?} was changed by someone else while pmctl was writing it (expected revision {expected}, found {actual}); nothing was written: check `pmctl config get {pool}` and retry")]
    Conflict {
        /// The pool whose config changed.
        pool: String,
        /// The mod_revision pmctl read (0: absent).
        expected: i64,
        /// The mod_revision found (0: absent).
        actual: i64,
    },
    /// The change makes no sense in the current state (pool being deleted, zone not allowed).
    #[error("{0}")]
    Refused(String),
    /// Writing the output failed (other than a closed pipe, which ends quietly).
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        EXIT_ERROR
    }

    /// True when stdout was closed by its reader (`pmctl events | head`): not worth a
    /// message, and not a failure of the command.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// The message with its chain of causes, for stderr.
    pub fn report(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        text
    }
}

/// Result of a pmctl command.
pub type Result<T> = std::result::Result<T, Error>;
