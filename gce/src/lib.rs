//! Compute Engine for `pm`: the narrow [`Compute`] trait, its REST client, the one place
//! GCE errors are classified, instance-template rendering, and an in-process fake. The
//! gce-sim server lives in its own crate, `gce-sim`, which uses these types.

#![warn(missing_docs)]

pub mod compute;
pub mod error;
pub mod fake;
pub mod filter;
pub mod resources;
pub mod rest;
pub mod template;

pub use compute::{
    is_valid_request_id, operation_result, request_id_for, wait_until_done, ApiCall, BoxFuture,
    Compute, PageRequest,
};
pub use error::{ErrorClass, GceError};
pub use fake::{FakeCall, FakeCompute};
pub use pm_backoff::{Backoff, BackoffError};
pub use resources::{
    BulkInsertRequest, Instance, InstanceList, InstanceStatus, Metadata, MetadataItem,
    OnHostMaintenance, Operation, OperationError, OperationErrorItem, OperationList,
    OperationStatus, Project, ProvisioningModel, Scheduling, Tags, TerminationAction,
};
pub use rest::{Auth, RestCompute, RestConfig, DEFAULT_BASE_URL};
pub use template::{render, render_text, TemplateError, TemplateVars, POOL_LABEL};
