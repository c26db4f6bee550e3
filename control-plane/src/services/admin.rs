//! `tether.v1.AdminService`: the control plane itself (its background tasks).

use std::sync::Arc;

use tether_proto::pb;
use tether_types::{duration_to_pb, millis_to_timestamp};
use tonic::{Request, Response, Status};

use crate::app::App;
use crate::background::{Statuses, TaskStatus};

pub struct AdminApi {
    app: Arc<App>,
    tasks: Statuses,
}

impl AdminApi {
    pub fn new(app: Arc<App>, tasks: Statuses) -> Self {
        AdminApi { app, tasks }
    }
}

fn task_pb(t: TaskStatus) -> pb::BackgroundTask {
    pb::BackgroundTask {
        name: t.name.into(),
        description: t.description.into(),
        period: Some(duration_to_pb(t.period)),
        leader_only: t.leader_only,
        running: t.running,
        activations: t.activations,
        consecutive_failures: t.consecutive_failures,
        items_skipped: t.items_skipped,
        last_started_at: (t.last_started_at > 0).then(|| millis_to_timestamp(t.last_started_at)),
        last_duration: (t.activations > 0).then(|| duration_to_pb(t.last_duration)),
        last_outcome: t.last_outcome.into(),
        last_message: t.last_message,
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn list_background_tasks(
        &self,
        req: Request<pb::ListBackgroundTasksRequest>,
    ) -> Result<Response<pb::ListBackgroundTasksResponse>, Status> {
        self.app.auth.caller(&req)?.need_platform()?;
        let tasks = self.tasks.list().into_iter().map(task_pb).collect();
        Ok(Response::new(pb::ListBackgroundTasksResponse { tasks }))
    }
}
