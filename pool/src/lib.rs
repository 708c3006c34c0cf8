//! What a pm pool config means, in one place for pmctl, the scheduler and the agent.
//!
//! - [`fields`]: field names, choices, ranges and defaults ([`rest`], [`exhaustion_base`]).
//! - [`validation`]: a config document checked into a [`PoolConfig`](pm_proto::PoolConfig)
//!   with every problem named ([`validate`]), and a stored config checked with the same
//!   rules ([`check_stored`]).
//! - [`instance_template`]: the `instance` template checked as the agent will render it.
//! - [`document`]: a stored config written back as a config document.
//! - [`naming`]: prefixes, instance names, zone names, pool membership.
//! - [`hooks`]: the hook events and the one rule for hook names.
//! - [`observed`]: how an observed instance counts (running, starting, lost, deleting).
//! - [`problem`]: the [`Problem`] every check reports.
//! - [`disruption`]: the disruption budget ([`disruption::max_concurrent`]) and the
//!   drain wait.
//! - [`update`]: revisions ([`revision`]) and the rollout budgets of the update policy.

pub mod disruption;
pub mod document;
pub mod fields;
pub mod hooks;
pub mod instance_template;
pub mod naming;
pub mod observed;
pub mod problem;
pub mod removal;
pub mod update;
pub mod validation;

pub use document::{ConfigDocument, HooksDocument};
pub use fields::{exhaustion_base, project_or, rest};
pub use hooks::{is_plain_hook_name, HookEvent};
pub use naming::{carries_pool_label, is_pool_member, new_instance_name, pool_filter};
pub use observed::{is_live, ObservedStatus};
pub use problem::Problem;
pub use update::{budgets, revision, Budgets, REVISION_LABEL};
pub use validation::{check_stored, validate};
