//! pm's typed etcd layer, over etcd-client.
//!
//! - [`keys`]: every key of DESIGN.md's keyspace, built and parsed in one place.
//! - [`Store`]: typed get/list/put/delete of the protobuf values, compare-and-swap, and
//!   fenced transactions that fail with [`Error::FencedOut`] once the writer is deposed.
//! - [`Session`] and [`Election`]: a lease kept alive in its own task, campaigns, leader
//!   observation, and a token that fires as soon as leadership is lost.
//! - [`ResumableWatch`]: a watch that resumes after errors and restarts, and re-lists
//!   after compaction, so no change is lost or seen twice.
//! - [`PoolsView`]: the one typed view of the `pools/` keyspace (configs, desired,
//!   exhausted, reports, observed instances) that the daemons and pmctl read, built
//!   from a listing and watch batches, telling what each changed.
//! - [`EtcdOptions`]: endpoints, TLS and user/password.
//!
//! With the `testing` feature, [`testing`] builds stored keys and watch events for tests.
//!
//! The flags that fill [`EtcdOptions`] in (`EtcdArgs`) and the rest of a binary's start
//! live in `pm-daemon`.

pub mod connect;
pub mod election;
pub mod error;
pub mod events;
pub mod fence;
pub mod keys;
pub mod range;
mod retry;
pub mod session;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod view;
pub mod watch;

pub use connect::{EtcdOptions, Secret, TlsFiles};
pub use election::{Election, LeaderInfo, Leadership};
pub use error::{Error, Result};
pub use events::{now_unix_ms, EventLog};
pub use fence::Fence;
pub use keys::{Key, Keyspace};
pub use session::Session;
pub use store::{decode, put_op, Listing, Store, Versioned, ZoneListing, MAX_TXN_OPS};
pub use view::{Change, PoolKeys, PoolsView, Stamped, Value, ZoneKeys};
pub use watch::{ResumableWatch, StoredKey, WatchBatch, WatchEvent, WatchRange};

pub use etcd_client;
