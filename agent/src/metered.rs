//! A [`Compute`] that counts and times every call of the one it wraps, so the GCE clients
//! stay free of metrics and every client (REST, fake) is measured alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use pm_gce::compute::{operation_result, ApiCall, BoxFuture, Compute, PageRequest};
use pm_gce::error::{ErrorClass, GceError};
use pm_gce::resources::{BulkInsertRequest, Instance, InstanceList, Operation};
use tokio::time::Instant;

use crate::metrics::{AgentMetrics, GceCallLabels, GceMethodLabels};

/// The `result` label of an error class.
pub fn class_label(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Stockout => "stockout",
        ErrorClass::Quota => "quota",
        ErrorClass::RateLimit => "rate_limit",
        ErrorClass::NotFound => "not_found",
        ErrorClass::AlreadyExists => "already_exists",
        ErrorClass::Retryable => "retryable",
        ErrorClass::Permanent => "permanent",
    }
}

/// Wraps a Compute client; records `pm_gce_calls_total` and
/// `pm_gce_call_duration_seconds` around every call.
pub struct MeteredCompute {
    /// The client that does the work.
    inner: Arc<dyn Compute>,
    /// Where calls are recorded.
    metrics: AgentMetrics,
}

impl MeteredCompute {
    /// Measures `inner` into `metrics`.
    pub fn new(inner: Arc<dyn Compute>, metrics: AgentMetrics) -> Self {
        Self { inner, metrics }
    }

    /// Awaits `call` and records it; `ok_result` names the result of a call that returned.
    fn record<'a, T: Send + 'a>(
        &'a self,
        method: ApiCall,
        zone: &'a str,
        call: BoxFuture<'a, Result<T, GceError>>,
        ok_result: fn(&T) -> &'static str,
    ) -> BoxFuture<'a, Result<T, GceError>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = call.await;
            let elapsed = started.elapsed().as_secs_f64();
            let outcome = match &result {
                Ok(value) => ok_result(value),
                Err(e) => class_label(e.class()),
            };
            let method = method.method();
            self.metrics
                .gce_latency
                .get_or_create(&GceMethodLabels {
                    zone: zone.to_string(),
                    method,
                })
                .observe(elapsed);
            self.metrics
                .gce_calls
                .get_or_create(&GceCallLabels {
                    zone: zone.to_string(),
                    method,
                    result: outcome,
                })
                .inc();
            result
        })
    }
}

/// A success is `ok`.
fn ok<T>(_: &T) -> &'static str {
    "ok"
}

/// A returned operation that already failed (GCE may answer so, or a wait may end on a
/// failed operation) counts with its error's class.
fn operation_outcome(op: &Operation) -> &'static str {
    match operation_result(op.clone()) {
        Ok(_) => "ok",
        Err(e) => class_label(e.class()),
    }
}

impl Compute for MeteredCompute {
    fn insert<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        instance: &'a Instance,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        let call = self.inner.insert(project, zone, instance, request_id);
        self.record(ApiCall::Insert, zone, call, operation_outcome)
    }

    fn bulk_insert<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        request: &'a BulkInsertRequest,
        request_id: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        let call = self.inner.bulk_insert(project, zone, request, request_id);
        self.record(ApiCall::BulkInsert, zone, call, operation_outcome)
    }

    fn get<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Instance>, GceError>> {
        let call = self.inner.get(project, zone, name);
        self.record(ApiCall::Get, zone, call, ok)
    }

    fn list_page<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        page: &'a PageRequest,
    ) -> BoxFuture<'a, Result<InstanceList, GceError>> {
        let call = self.inner.list_page(project, zone, page);
        self.record(ApiCall::List, zone, call, ok)
    }

    fn list<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Instance>, GceError>> {
        let call = self.inner.list(project, zone, filter);
        self.record(ApiCall::List, zone, call, ok)
    }

    fn delete<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Operation>, GceError>> {
        let call = self.inner.delete(project, zone, name);
        self.record(ApiCall::Delete, zone, call, ok)
    }

    fn start<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        let call = self.inner.start(project, zone, name);
        self.record(ApiCall::Start, zone, call, operation_outcome)
    }

    fn resume<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        let call = self.inner.resume(project, zone, name);
        self.record(ApiCall::Resume, zone, call, operation_outcome)
    }

    fn wait_operation<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        operation: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        let call = self.inner.wait_operation(project, zone, operation);
        self.record(ApiCall::WaitOperation, zone, call, operation_outcome)
    }

    fn set_labels<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<Operation, GceError>> {
        let call = self
            .inner
            .set_labels(project, zone, name, labels, fingerprint);
        self.record(ApiCall::SetLabels, zone, call, operation_outcome)
    }

    fn list_operations<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Operation>, GceError>> {
        let call = self.inner.list_operations(project, zone, filter);
        self.record(ApiCall::ListOperations, zone, call, ok)
    }

    fn recent_operations<'a>(
        &'a self,
        project: &'a str,
        zone: &'a str,
        filter: Option<&'a str>,
        max_results: u32,
    ) -> BoxFuture<'a, Result<Vec<Operation>, GceError>> {
        let call = self
            .inner
            .recent_operations(project, zone, filter, max_results);
        self.record(ApiCall::ListOperations, zone, call, ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pm_gce::compute::request_id_for;
    use pm_gce::fake::FakeCompute;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    fn instance(name: &str) -> Instance {
        serde_json::from_value(serde_json::json!({"name": name})).unwrap()
    }

    #[tokio::test]
    async fn every_call_is_counted_by_method_and_result_and_timed() {
        let fake = Arc::new(FakeCompute::new());
        let mut registry = Registry::default();
        let metrics = AgentMetrics::new(&mut registry, "z1");
        let compute = MeteredCompute::new(fake.clone(), metrics);
        let op = compute
            .insert("p", "z1", &instance("web-1"), &request_id_for("web-1"))
            .await
            .unwrap();
        compute.wait_operation("p", "z1", &op.name).await.unwrap();
        compute.list("p", "z1", None).await.unwrap();
        fake.fail_next(
            Some(ApiCall::Insert),
            GceError::http(ApiCall::Insert, 403, "quotaExceeded", "quota"),
        );
        assert!(compute
            .insert("p", "z1", &instance("web-2"), &request_id_for("web-2"))
            .await
            .is_err());
        fake.fail_next_operation(ApiCall::Insert, "ZONE_RESOURCE_POOL_EXHAUSTED", 503);
        let failed = compute
            .insert("p", "z1", &instance("web-3"), &request_id_for("web-3"))
            .await
            .unwrap();
        compute
            .wait_operation("p", "z1", &failed.name)
            .await
            .unwrap();
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        let count = |method: &str, result: &str| {
            format!("pm_gce_calls_total{{zone=\"z1\",method=\"{method}\",result=\"{result}\"}}")
        };
        for (line, n) in [
            (count("compute.instances.insert", "ok"), 1),
            (count("compute.instances.insert", "quota"), 1),
            (count("compute.instances.insert", "stockout"), 1),
            (count("compute.zoneOperations.wait", "ok"), 1),
            (count("compute.zoneOperations.wait", "stockout"), 1),
            (count("compute.instances.list", "ok"), 1),
        ] {
            assert!(out.contains(&format!("{line} {n}")), "{line} {n} in\n{out}");
        }
        assert!(
            out.contains(
                "pm_gce_call_duration_seconds_count{zone=\"z1\",method=\"compute.instances.insert\"} 3"
            ),
            "{out}"
        );
        assert_eq!(
            fake.calls_of(ApiCall::Insert).len(),
            3,
            "every call reached the client"
        );
    }
}
