//! `tether.v1.EventService`: the event log, listed and watched. Watchers
//! are served by [`crate::events::follow`] (the in-memory tail while they
//! keep up, the database while they catch up).

use std::sync::Arc;

use tether_proto::pb;
use tether_store::{Event, EventQuery, EventScope};
use tether_types::{Error, OrgId, OrgRole, Role, millis_to_timestamp, timestamp_to_millis};
use tonic::{Request, Response, Status};

use super::{status, store_status};
use crate::app::App;
use crate::auth::Caller;
use crate::stream::BoxStream;

const DEFAULT_PAGE: u32 = 100;

pub struct EventApi {
    app: Arc<App>,
}

impl EventApi {
    pub fn new(app: Arc<App>) -> Self {
        EventApi { app }
    }
}

/// The filter fields both requests share.
struct Filter {
    kind_prefix: String,
    subject: String,
    principal: String,
    organization_id: String,
}

macro_rules! filter_of {
    ($req:expr) => {
        Filter {
            kind_prefix: std::mem::take(&mut $req.kind_prefix),
            subject: std::mem::take(&mut $req.subject),
            principal: std::mem::take(&mut $req.principal),
            organization_id: std::mem::take(&mut $req.organization_id),
        }
    };
}

/// The query a filter asks for, within what the caller may read: the
/// project's events, or with `organization_id` the organisation's (org-viewer).
/// A token confined to one node or workload reads only events about it.
fn query(who: &Caller, f: Filter, after: i64) -> Result<EventQuery, Status> {
    let scope = if f.organization_id.is_empty() {
        EventScope::Project(who.in_project(Role::Viewer)?.id().clone())
    } else {
        let org = OrgId::parse(&f.organization_id).map_err(status)?;
        who.in_org(&org, OrgRole::Viewer)?;
        EventScope::Org(org)
    };
    let mut subject = (!f.subject.is_empty()).then_some(f.subject);
    let confined =
        who.claims.node.as_ref().map(|n| n.to_string()).or(who.claims.workload.as_ref().map(|w| w.to_string()));
    if let Some(only) = confined {
        if subject.as_ref().is_some_and(|s| s != &only) {
            return Err(status(Error::permission_denied(format!("this token only reads events about {only}"))));
        }
        subject = Some(only);
    }
    Ok(EventQuery {
        kind_prefix: f.kind_prefix,
        subject,
        principal: (!f.principal.is_empty()).then_some(f.principal),
        ..EventQuery::new(scope, after)
    })
}

fn sequence(v: u64, field: &str) -> Result<i64, Status> {
    i64::try_from(v).map_err(|_| status(Error::invalid(format!("{field} is out of range"))))
}

/// An event as the API shows it.
pub fn to_pb(e: &Event) -> pb::Event {
    pb::Event {
        sequence: e.seq as u64,
        time: Some(millis_to_timestamp(e.at)),
        kind: e.kind.clone(),
        subject: e.subject.clone(),
        organization_id: e.org_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        project_id: e.project_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        principal: e.actor.as_ref().map(|a| a.principal.clone()).unwrap_or_default(),
        principal_role: e.actor.as_ref().map(|a| a.role.clone()).unwrap_or_default(),
        schema_version: tether_store::event_kind(&e.kind).map_or(0, |k| k.version),
        payload: Some(match &e.payload {
            serde_json::Value::Object(m) => to_struct(m),
            other => to_struct(&serde_json::Map::from_iter([("value".to_string(), other.clone())])),
        }),
    }
}

fn to_struct(m: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct { fields: m.iter().map(|(k, v)| (k.clone(), to_value(v))).collect() }
}

fn to_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        // JSON numbers travel as doubles in a Struct; ids and times in
        // payloads are well inside 2^53.
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(prost_types::ListValue { values: a.iter().map(to_value).collect() }),
        J::Object(m) => Kind::StructValue(to_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[tonic::async_trait]
impl pb::event_service_server::EventService for EventApi {
    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let who = self.app.auth.caller(&req)?;
        let mut req = req.into_inner();
        let mut q = query(&who, filter_of!(req), sequence(req.after_sequence, "after_sequence")?)?;
        q.from_at = req.start_time.as_ref().map(timestamp_to_millis);
        q.until_at = req.end_time.as_ref().map(timestamp_to_millis);
        let limit = match req.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(1000),
        };
        let events = self.app.store.events_query(&q, limit).await.map_err(store_status)?;
        let (_, oldest) = self.app.store.events_bounds().await.map_err(store_status)?;
        let next_sequence = match events.last() {
            Some(e) if events.len() == limit as usize => e.seq as u64,
            _ => 0,
        };
        Ok(Response::new(pb::ListEventsResponse {
            events: events.iter().map(to_pb).collect(),
            next_sequence,
            oldest_sequence: oldest.unwrap_or(0) as u64,
        }))
    }

    type WatchEventsStream = BoxStream<pb::WatchEventsResponse>;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let who = self.app.auth.caller(&req)?;
        let mut req = req.into_inner();
        let since = match req.since_sequence {
            0 => self.app.store.events_head().await.map_err(store_status)?,
            n => {
                let n = sequence(n, "since_sequence")?;
                crate::events::check_resumable(&self.app.store, n).await?;
                n
            }
        };
        let q = query(&who, filter_of!(req), since)?;
        let (tx, rx) = crate::stream::channel(64);
        let app = self.app.clone();
        self.app.tasks.spawn(async move {
            crate::events::follow(&app.events, &app.store, &app.shutdown, q, tx, |e| {
                Some(pb::WatchEventsResponse { sequence: e.seq as u64, event: Some(to_pb(e)) })
            })
            .await
        });
        Ok(Response::new(crate::stream::idle_limited(rx, self.app.config.stream_idle_timeout)))
    }
}
