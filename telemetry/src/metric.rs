//! Metric definitions: name, help and kind declared once, registered from there, and the
//! names PromQL sees derived from them.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::{Metric, Registry};

/// The kinds of metric pm exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up; PromQL sees `<name>_total`.
    Counter,
    /// A value that goes up and down; PromQL sees `<name>`.
    Gauge,
    /// Observations in buckets; PromQL sees `<name>_bucket`, `<name>_sum`, `<name>_count`.
    Histogram,
}

impl MetricKind {
    /// The word of the exposition's `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One exported metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// The family name, starting with `pm_`, without the `_total` a counter gets.
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Its kind.
    pub kind: MetricKind,
}

impl MetricDef {
    /// A counter.
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind: MetricKind::Counter,
        }
    }

    /// A gauge.
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind: MetricKind::Gauge,
        }
    }

    /// A histogram.
    pub const fn histogram(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind: MetricKind::Histogram,
        }
    }

    /// Registers `metric` under this definition.
    ///
    /// # Panics
    /// When the metric is not of this definition's kind: a programming error that the
    /// daemon's first start (and every test) shows.
    pub fn register<M: Metric + TypedMetric>(&self, registry: &mut Registry, metric: M) {
        assert_eq!(
            M::TYPE.as_str(),
            self.kind.as_str(),
            "metric {} registered with the wrong kind",
            self.name
        );
        registry.register(self.name, self.help, metric);
    }

    /// The names of the series PromQL sees for this family.
    pub fn series(&self) -> Vec<String> {
        match self.kind {
            MetricKind::Counter => vec![format!("{}_total", self.name)],
            MetricKind::Gauge => vec![self.name.to_string()],
            MetricKind::Histogram => ["bucket", "sum", "count"]
                .iter()
                .map(|suffix| format!("{}_{suffix}", self.name))
                .collect(),
        }
    }
}

/// Labels of [`ETCD_ERRORS`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EtcdErrorLabels {
    /// What failed: `probe` (the readiness probe's request) or `term` (registering,
    /// campaigning, or the leader's or active agent's work, ended by an etcd error).
    pub op: &'static str,
}

/// Failed etcd requests, shared by both daemons.
pub const ETCD_ERRORS: MetricDef = MetricDef::counter(
    "pm_etcd_errors",
    "Failed etcd requests: op=probe is the readiness probe, op=term a session, campaign or leader term that ended on an etcd error",
);

/// The largest etcd reply the daemon received (a range page or a watch response), shared
/// by both daemons: pm reads in pages, so it stays near 512 KiB whatever the size.
pub const ETCD_LARGEST_REPLY: MetricDef = MetricDef::gauge(
    "pm_etcd_largest_reply_bytes",
    "The largest etcd reply (range page or watch response) this process received, in bytes",
);

/// The families of an exposition text, from its `# TYPE name kind` lines, in order.
pub fn exposed_families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

/// The gauge of a family whose series are replaced as a whole: each [`GaugeSet::replace`]
/// sets the given series and removes those it does not name, so the series of a deleted
/// pool or zone go away.
#[derive(Debug, Clone)]
pub struct GaugeSet<L> {
    /// The registered family.
    family: Family<L, Gauge<f64, AtomicU64>>,
    /// The label sets of the last `replace`; exactly the series the family holds.
    shown: Arc<Mutex<HashSet<L>>>,
}

impl<L> GaugeSet<L>
where
    L: Clone + Hash + Eq + Debug + EncodeLabelSet + Send + Sync + 'static,
{
    /// A gauge family registered under `def`.
    pub fn register(def: &MetricDef, registry: &mut Registry) -> Self {
        let family = Family::default();
        def.register(registry, family.clone());
        Self {
            family,
            shown: Arc::default(),
        }
    }

    /// Makes `values` the family's only series.
    pub fn replace(&self, values: impl IntoIterator<Item = (L, f64)>) {
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = HashSet::with_capacity(shown.len());
        for (labels, value) in values {
            self.family.get_or_create(&labels).set(value);
            now.insert(labels);
        }
        for gone in shown.difference(&now) {
            self.family.remove(gone);
        }
        *shown = now;
    }

    /// Removes every series.
    pub fn clear(&self) {
        self.replace(std::iter::empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct Pool {
        pool: String,
    }

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn series_names_follow_the_kind() {
        assert_eq!(ETCD_ERRORS.series(), vec!["pm_etcd_errors_total"]);
        let h = MetricDef::histogram("pm_x_seconds", "x");
        assert_eq!(
            h.series(),
            vec![
                "pm_x_seconds_bucket",
                "pm_x_seconds_sum",
                "pm_x_seconds_count"
            ]
        );
    }

    #[test]
    fn registered_families_show_with_their_kind() {
        let mut registry = Registry::default();
        let errors = Family::<EtcdErrorLabels, Counter>::default();
        ETCD_ERRORS.register(&mut registry, errors.clone());
        errors.get_or_create(&EtcdErrorLabels { op: "probe" }).inc();
        let out = text(&registry);
        assert_eq!(
            exposed_families(&out),
            vec![("pm_etcd_errors".to_string(), "counter".to_string())]
        );
        assert!(
            out.contains("pm_etcd_errors_total{op=\"probe\"} 1"),
            "{out}"
        );
    }

    #[test]
    #[should_panic(expected = "wrong kind")]
    fn a_kind_mismatch_is_refused() {
        let mut registry = Registry::default();
        MetricDef::gauge("pm_g", "g").register(&mut registry, Counter::<u64>::default());
    }

    #[test]
    fn replace_removes_series_it_does_not_name() {
        let mut registry = Registry::default();
        let set = GaugeSet::register(&MetricDef::gauge("pm_g", "g"), &mut registry);
        let pool = |p: &str| Pool { pool: p.into() };
        set.replace([(pool("web"), 3.0), (pool("api"), 1.0)]);
        let out = text(&registry);
        assert!(out.contains("pm_g{pool=\"web\"} 3.0"), "{out}");
        assert!(out.contains("pm_g{pool=\"api\"} 1.0"), "{out}");
        set.replace([(pool("web"), 4.0)]);
        let out = text(&registry);
        assert!(out.contains("pm_g{pool=\"web\"} 4.0"), "{out}");
        assert!(!out.contains("api"), "{out}");
        set.clear();
        assert!(!text(&registry).contains("web"));
    }
}
