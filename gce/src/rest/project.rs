//! The project calls of the REST client: `projects.get` (prevmtable's config lives in the
//! project's `commonInstanceMetadata`), `projects.setCommonInstanceMetadata` and its
//! global operation. They are not part of [`crate::Compute`]: only pmctl's import and the
//! tests call them, never the daemons.

use std::time::Duration;

use reqwest::Method;

use super::{encode_segment, RestCompute};
use crate::compute::{operation_result, ApiCall, MIN_WAIT_INTERVAL};
use crate::error::GceError;
use crate::resources::{Metadata, Operation, Project};

impl RestCompute {
    fn project_url(&self, project: &str, rest: &[&str]) -> String {
        let mut url = format!("{}projects/{}", self.base_url, encode_segment(project));
        for segment in rest {
            url.push('/');
            url.push_str(&encode_segment(segment));
        }
        url
    }

    /// `projects.get`: the project with its `commonInstanceMetadata`.
    pub async fn get_project(&self, project: &str) -> Result<Project, GceError> {
        let url = self.project_url(project, &[]);
        self.send(self.request(ApiCall::GetProject, Method::GET, url))
            .await
    }

    /// `projects.setCommonInstanceMetadata`: replaces the project's metadata with
    /// `metadata`, which must carry the fingerprint [`Self::get_project`] showed (else
    /// HTTP 412 `conditionNotMet`). `request_id` makes a retry harmless. Returns the
    /// global operation, finished ([`Self::wait_global_operation`]).
    pub async fn set_common_instance_metadata(
        &self,
        project: &str,
        metadata: &Metadata,
        request_id: &str,
        deadline: Duration,
    ) -> Result<Operation, GceError> {
        let url = self.project_url(project, &["setCommonInstanceMetadata"]);
        let request = self.request(ApiCall::SetCommonInstanceMetadata, Method::POST, url);
        let mut request = Self::with_body(request, metadata)?;
        request.query.push(("requestId", request_id.to_string()));
        let started: Operation = self.send(request).await?;
        self.wait_global_operation(project, started, deadline).await
    }

    /// Waits until the global operation `op` is DONE (`globalOperations.wait`, repeated),
    /// for at most `deadline`, and returns it through [`operation_result`].
    pub async fn wait_global_operation(
        &self,
        project: &str,
        op: Operation,
        deadline: Duration,
    ) -> Result<Operation, GceError> {
        let started = tokio::time::Instant::now();
        let mut current = op;
        while !current.is_done() {
            if started.elapsed() >= deadline {
                return Err(GceError::OperationTimeout {
                    operation: current.name,
                    waited: started.elapsed(),
                    last_status: current.status.as_str().to_string(),
                });
            }
            let url = self.project_url(project, &["global", "operations", &current.name, "wait"]);
            let mut request = self.request(ApiCall::WaitGlobalOperation, Method::POST, url);
            request.timeout = self.wait_timeout;
            let polled = tokio::time::Instant::now();
            current = self.send(request).await?;
            let quick = MIN_WAIT_INTERVAL.saturating_sub(polled.elapsed());
            if !current.is_done() && !quick.is_zero() {
                tokio::time::sleep(quick).await;
            }
        }
        operation_result(current)
    }
}
