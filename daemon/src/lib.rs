//! What pm's binaries share to start and run.
//!
//! - [`parse_args`]: flags over `PM_*` variables over an optional config file;
//!   [`parse_duration`] for duration settings.
//! - [`EtcdArgs`]: the flags that say how to reach etcd, for every binary;
//!   [`DaemonArgs`]: the flags both daemons share, with [`default_id`].
//! - [`GceArgs`]: the flags that say how to reach the Compute API (agent, pmctl).
//! - [`init_logging`] and [`cancel_on_signal`]: a binary's logging and clean stop.
//! - [`run_elected`]: an elected daemon's loop (campaign, lead, resign, campaign again),
//!   with a [`Candidate`] for what the daemon does in each phase; failed terms are
//!   retried after a jittered back-off (`terms.rs`).
//!
//! The etcd layer itself (keys, store, sessions, elections) is `pm-etcd`.

mod daemon_args;
mod duration;
mod elected;
mod etcd_args;
mod gce_args;
mod layering;
mod logging;
mod signals;
mod terms;

pub use daemon_args::{default_id, DaemonArgs};
pub use duration::parse_duration;
pub use elected::{run_elected, Candidate, TermEnd};
pub use etcd_args::EtcdArgs;
pub use gce_args::GceArgs;
pub use layering::parse_args;
pub use logging::{init_logging, LogFormat};
pub use signals::cancel_on_signal;
