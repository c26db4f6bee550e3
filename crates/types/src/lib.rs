//! Tether's domain model.
//!
//! Owns typed ids, the domain types the store and the services share, their
//! validating conversions from generated `pb` types, and the one [`ErrorCode`]
//! enum that both gRPC and REST answer with. It does no IO: no clock, no
//! randomness, no network; callers pass those in.

mod agent;
mod allocation;
mod error;
mod ids;
mod labels;
mod lifecycle;
mod node;
pub mod pool;
pub mod report;
pub mod secret;
pub mod settings;
mod tenancy;
mod time;
pub mod usage;
mod work;

pub use agent::{AgentMessage, Assignment, Command, DesiredState, Held, Outcome, OutputStream, WireKey};
pub use allocation::{AllocKey, AllocKind, AllocStatus, Allocation};
pub use error::{Error, ErrorCode, Result};
pub use ids::{AccessKeyId, AllocId, JobId, JoinTokenId, NodeId, OrgId, ProjectId, TokenId, WorkloadId};
pub use labels::{LabelSelector, Labels, validate_labels};
pub use lifecycle::{JobEvent, Shortfall};
pub use node::{DesiredNodeState, Gpu, Node, NodeCapabilities, NodeStatus, NodeTransport, NodeUsage};
pub use report::{NodeReport, ReportAlert, ReportJobFailure};
pub use secret::{ResealRequest, Resealed, SealedSecret, SecretRef};
pub use tenancy::{
    DEFAULT_POOL, JoinToken, NodePlace, OrgRole, Organization, PoolGrant, Project, ProjectAccess, Quota, Role, Usage,
    validate_tenant_name,
};
pub use time::{UnixMillis, duration_from_pb, duration_to_pb, millis_to_timestamp, timestamp_to_millis};
pub use work::{
    Constraints, ExecSpec, Job, JobSpec, JobStatus, MAX_ATTEMPTS, Resources, RestartPolicy, Workload, WorkloadSpec,
    chars, validate_job_labels, validate_name, validate_text,
};

/// Upper bound on the size of any free-text field we store (descriptions, reasons).
pub const MAX_TEXT_LEN: usize = 1024;

/// Text an agent reports (an error, a refusal's reason), made storable: at
/// most [`MAX_TEXT_LEN`] characters, NUL (which PostgreSQL text cannot hold)
/// replaced by U+FFFD. Agents' stream messages are not refused for their
/// text; operators' requests are (`tether_proto::rules`).
pub fn agent_text(s: &str) -> String {
    s.chars().take(MAX_TEXT_LEN).map(|c| if c == '\0' { '\u{fffd}' } else { c }).collect()
}
