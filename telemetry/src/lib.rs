//! What `pm-scheduler` and `pm-agent` share for observability.
//!
//! - [`MetricDef`]: a metric's name, help and kind, declared once; each daemon lists its
//!   definitions in a `METRICS` constant, the single source of truth that registration,
//!   dashboards and alert rules are checked against.
//! - [`Readiness`]: the conditions a daemon must meet to be ready, set as they change;
//!   [`WATCH_CONDITION`] is the one its etcd watches set.
//! - [`probe_etcd`]: a background request to etcd that keeps the `etcd` condition true.
//! - [`serve`]: the HTTP server of `--metrics ADDR`: `/metrics`, `/healthz`, `/readyz`.
//! - [`serve_then_connect`]: a daemon's start, with both of the above.

mod metric;
mod probe;
mod readiness;
mod server;

pub use metric::{
    exposed_families, EtcdErrorLabels, GaugeSet, MetricDef, MetricKind, ETCD_ERRORS,
    ETCD_LARGEST_REPLY,
};
pub use probe::{probe_etcd, serve_then_connect, ETCD_CONDITION, PROBE_INTERVAL};
pub use readiness::{Readiness, WATCH_CONDITION};
pub use server::serve;
