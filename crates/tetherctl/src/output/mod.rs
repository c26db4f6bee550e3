//! Tables for people, proto3 JSON for scripts. The records of newer
//! services print from their own files here.

mod events;
mod insights;
mod pools;
mod secrets;
mod usage;

use std::io::Write;
use std::sync::LazyLock;

use clap::ValueEnum;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use tether_proto::pb;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    /// Only the ids, one per line: for `$(tetherctl -o id ...)`.
    Id,
}

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(tether_proto::FILE_DESCRIPTOR_SET).expect("the embedded descriptors decode")
});

/// A message as proto3 JSON, the same mapping as the REST API.
fn to_json<M: Message>(m: &M, full_name: &str) -> serde_json::Value {
    let desc = POOL.get_message_by_name(full_name).expect("a known message");
    let dynamic = DynamicMessage::decode(desc, m.encode_to_vec().as_slice()).expect("our own encoding decodes");
    serde_json::to_value(&dynamic).expect("JSON")
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let secs = t.seconds;
            let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
            let (y, m, d) = civil(days);
            format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The enum value's name without its prefix, lowercased: NODE_STATUS_READY -> ready.
pub(crate) fn short<E: std::fmt::Debug>(e: Result<E, prost::UnknownEnumValue>) -> String {
    match e {
        Ok(v) => {
            let s = format!("{v:?}");
            let mut out = String::new();
            for (i, ch) in s.chars().enumerate() {
                if ch.is_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(ch.to_ascii_lowercase());
            }
            out
        }
        Err(_) => "unknown".into(),
    }
}

fn quota(q: Option<&pb::Quota>) -> String {
    let q = q.copied().unwrap_or_default();
    let one = |what: &str, v: Option<u64>, unit: &str| v.map(|v| format!("{what}={v}{unit}"));
    let parts: Vec<String> = [
        one("cpu", q.cpu_millis, "m"),
        one("mem", q.memory_mb, "MB"),
        one("gpus", q.gpus, ""),
        one("allocations", q.allocations, ""),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() { "unlimited".into() } else { parts.join(" ") }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn labels(l: &std::collections::HashMap<String, String>) -> String {
    let mut v: Vec<_> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    if v.is_empty() { "-".into() } else { v.join(",") }
}

/// The resource ids in a response: `*Id` fields of the message, or of each
/// item of its first list.
fn ids(v: &serde_json::Value) -> Vec<String> {
    // In order: an object's first key found is its id (a job's jobId, not
    // its projectId).
    const KEYS: [&str; 8] =
        ["nodeId", "jobId", "workloadId", "tokenId", "joinTokenId", "allocationId", "projectId", "organizationId"];
    let own = |o: &serde_json::Map<String, serde_json::Value>| {
        KEYS.iter().find_map(|k| o.get(*k).and_then(|v| v.as_str()).map(str::to_owned))
    };
    let Some(obj) = v.as_object() else { return Vec::new() };
    if let Some(id) = own(obj) {
        return vec![id];
    }
    for val in obj.values() {
        match val {
            serde_json::Value::Array(items) => {
                return items.iter().filter_map(|i| i.as_object().and_then(own)).collect();
            }
            serde_json::Value::Object(inner) => {
                if let Some(id) = own(inner) {
                    return vec![id];
                }
            }
            _ => {}
        }
    }
    Vec::new()
}

pub struct Out {
    format: Format,
}

impl Out {
    pub fn new(format: Format) -> Self {
        Out { format }
    }

    fn json<M: Message>(&self, m: &M, name: &str) -> bool {
        match self.format {
            Format::Json => {
                println!("{}", serde_json::to_string_pretty(&to_json(m, name)).expect("JSON"));
                true
            }
            Format::Id => {
                for id in ids(&to_json(m, name)) {
                    println!("{id}");
                }
                true
            }
            Format::Table => false,
        }
    }

    pub fn message<M: Message>(&self, m: &M, text: &str) {
        let name = std::any::type_name::<M>().rsplit("::").next().unwrap_or_default();
        if !self.json(m, &format!("tether.v1.{name}")) {
            println!("{text}");
        }
    }

    pub fn nodes(&self, r: &pb::ListNodesResponse) {
        if self.json(r, "tether.v1.ListNodesResponse") {
            return;
        }
        table(
            &["NODE", "HOSTNAME", "STATUS", "DESIRED", "POOL", "CPU", "MEM(MB)", "RUNNING", "LABELS"],
            r.nodes
                .iter()
                .map(|n| {
                    let caps = n.capabilities.clone().unwrap_or_default();
                    vec![
                        n.node_id.clone(),
                        caps.hostname,
                        short(pb::NodeStatus::try_from(n.status)),
                        short(pb::DesiredNodeState::try_from(n.desired_state)),
                        if n.pool.is_empty() { "-".into() } else { n.pool.clone() },
                        caps.cpu_count.to_string(),
                        caps.memory_mb.to_string(),
                        n.usage.map(|u| u.running_allocations.to_string()).unwrap_or_else(|| "-".into()),
                        labels(&n.labels),
                    ]
                })
                .collect(),
        );
    }

    pub fn node(&self, n: &pb::Node) {
        if self.json(n, "tether.v1.Node") {
            return;
        }
        let caps = n.capabilities.clone().unwrap_or_default();
        let rows = [
            ("node", n.node_id.clone()),
            ("hostname", caps.hostname.clone()),
            ("status", short(pb::NodeStatus::try_from(n.status))),
            (
                "desired",
                format!(
                    "{} (version {}, acked {}){}",
                    short(pb::DesiredNodeState::try_from(n.desired_state)),
                    n.desired_state_version,
                    n.acked_desired_state_version,
                    if n.desired_state_reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", n.desired_state_reason)
                    }
                ),
            ),
            ("os/arch", format!("{}/{} {}", caps.os, caps.arch, caps.kernel_version)),
            ("cpus", caps.cpu_count.to_string()),
            ("memory", format!("{} MB", caps.memory_mb)),
            ("disk", format!("{} MB", caps.disk_mb)),
            ("gpus", caps.gpus.iter().map(|g| g.model.clone()).collect::<Vec<_>>().join(", ")),
            ("addresses", caps.addresses.join(", ")),
            ("labels", labels(&n.labels)),
            ("pool", n.pool.clone()),
            ("agent", caps.agent_version.clone()),
            ("registered", ts(&n.registered_at)),
            ("last seen", ts(&n.last_seen_at)),
            (
                "usage",
                n.usage
                    .map(|u| {
                        format!(
                            "cpu {:.1}%, mem {} MB, disk {} MB, {} running",
                            u.cpu_percent, u.memory_used_mb, u.disk_used_mb, u.running_allocations
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
            ),
        ];
        for (k, v) in rows {
            println!("{k:<11} {v}");
        }
        if let Some(r) = &n.report {
            let mut health = if r.health.is_empty() { "-".to_string() } else { r.health.clone() };
            if !r.health_message.is_empty() {
                health = format!("{health}: {}", r.health_message);
            }
            let figures = |m: &std::collections::HashMap<String, f64>| {
                let mut v: Vec<_> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                v.sort();
                if v.is_empty() { "-".to_string() } else { v.join(", ") }
            };
            println!("{:<11} {health} (reported {})", "health", ts(&r.reported_at));
            println!("{:<11} {}", "gauges", figures(&r.gauges));
            println!("{:<11} {}", "counters", figures(&r.counters));
            for a in &r.alerts {
                println!("{:<11} {}: {}", "alert", a.level, a.message);
            }
        }
    }

    pub fn node_event(&self, e: &pb::WatchNodesResponse) {
        if self.format != Format::Table {
            println!("{}", to_json(e, "tether.v1.WatchNodesResponse"));
            return;
        }
        let n = e.node.clone().unwrap_or_default();
        println!(
            "{:>6}  {:<22} {:<24} {:<12} {}",
            e.sequence,
            e.kind,
            n.node_id,
            short(pb::NodeStatus::try_from(n.status)),
            n.capabilities.map(|c| c.hostname).unwrap_or_default()
        );
        let _ = std::io::stdout().flush();
    }

    pub fn jobs(&self, r: &pb::ListJobsResponse) {
        if self.json(r, "tether.v1.ListJobsResponse") {
            return;
        }
        table(
            &["JOB", "STATUS", "ATTEMPT", "NODE", "CREATED", "COMMAND"],
            r.jobs
                .iter()
                .map(|j| {
                    let exec = j.spec.as_ref().and_then(|s| s.exec.clone()).unwrap_or_default();
                    vec![
                        j.job_id.clone(),
                        short(pb::JobStatus::try_from(j.status)),
                        j.attempt.to_string(),
                        if j.node_id.is_empty() { "-".into() } else { j.node_id.clone() },
                        ts(&j.created_at),
                        std::iter::once(exec.command).chain(exec.args).collect::<Vec<_>>().join(" "),
                    ]
                })
                .collect(),
        );
    }

    pub fn job(&self, j: &pb::Job) {
        if self.json(j, "tether.v1.Job") {
            return;
        }
        let exec = j.spec.as_ref().and_then(|s| s.exec.clone()).unwrap_or_default();
        println!("job        {}", j.job_id);
        println!("status     {}", short(pb::JobStatus::try_from(j.status)));
        println!("command    {}", std::iter::once(exec.command).chain(exec.args).collect::<Vec<_>>().join(" "));
        println!("attempt    {}", j.attempt);
        if !j.node_id.is_empty() {
            println!("node       {}", j.node_id);
        }
        if j.status >= pb::JobStatus::Succeeded as i32 {
            println!("exit code  {}", j.exit_code);
        }
        if !j.error.is_empty() {
            println!("error      {}", j.error);
        }
        println!("created    {}", ts(&j.created_at));
        if !j.attempts.is_empty() {
            println!();
            table(
                &["ATTEMPT", "NODE", "STATUS", "EXIT", "STARTED", "FINISHED", "ERROR"],
                j.attempts
                    .iter()
                    .map(|a| {
                        vec![
                            a.attempt.to_string(),
                            a.node_id.clone(),
                            a.status.clone(),
                            a.exit_code.to_string(),
                            ts(&a.started_at),
                            ts(&a.finished_at),
                            a.error.clone(),
                        ]
                    })
                    .collect(),
            );
        }
    }

    pub fn log_chunk(&self, c: &pb::StreamJobLogsResponse) {
        if self.format != Format::Table {
            println!("{}", to_json(c, "tether.v1.StreamJobLogsResponse"));
        } else {
            let mut out = std::io::stdout();
            let _ = out.write_all(&c.data);
            let _ = out.flush();
        }
    }

    pub fn workloads(&self, r: &pb::ListWorkloadsResponse) {
        if self.json(r, "tether.v1.ListWorkloadsResponse") {
            return;
        }
        table(
            &["WORKLOAD", "NAME", "REPLICAS", "RUNNING", "VERSION"],
            r.workloads
                .iter()
                .map(|w| {
                    vec![
                        w.workload_id.clone(),
                        w.name.clone(),
                        w.replicas.to_string(),
                        w.running_replicas.to_string(),
                        w.spec_version.to_string(),
                    ]
                })
                .collect(),
        );
    }

    pub fn workload(&self, w: &pb::Workload) {
        if self.json(w, "tether.v1.Workload") {
            return;
        }
        println!("workload   {} ({})", w.workload_id, w.name);
        println!("replicas   {} wanted, {} running, spec version {}", w.replicas, w.running_replicas, w.spec_version);
        if !w.allocations.is_empty() {
            println!();
            table(
                &["ALLOCATION", "NODE", "STATUS", "VERSION", "RESTARTS"],
                w.allocations
                    .iter()
                    .map(|a| {
                        vec![
                            a.allocation_id.clone(),
                            a.node_id.clone(),
                            a.status.clone(),
                            a.spec_version.to_string(),
                            a.restarts.to_string(),
                        ]
                    })
                    .collect(),
            );
        }
    }

    pub fn orgs(&self, r: &pb::ListOrganizationsResponse) {
        if self.json(r, "tether.v1.ListOrganizationsResponse") {
            return;
        }
        table(
            &["ORGANIZATION", "NAME", "CREATED", "DESCRIPTION"],
            r.organizations
                .iter()
                .map(|o| vec![o.organization_id.clone(), o.name.clone(), ts(&o.created_at), o.description.clone()])
                .collect(),
        );
    }

    pub fn grants(&self, r: &pb::ListPoolGrantsResponse) {
        if self.json(r, "tether.v1.ListPoolGrantsResponse") {
            return;
        }
        table(
            &["POOL", "PROJECT", "GRANTED"],
            r.grants.iter().map(|g| vec![g.pool.clone(), g.project_id.clone(), ts(&g.created_at)]).collect(),
        );
    }

    pub fn projects(&self, r: &pb::ListProjectsResponse) {
        if self.json(r, "tether.v1.ListProjectsResponse") {
            return;
        }
        table(
            &["PROJECT", "ORGANIZATION", "NAME", "POOLS", "QUOTA"],
            r.projects
                .iter()
                .map(|p| {
                    vec![
                        p.project_id.clone(),
                        p.organization_id.clone(),
                        p.name.clone(),
                        p.pools.join(","),
                        quota(p.quota.as_ref()),
                    ]
                })
                .collect(),
        );
    }

    pub fn project(&self, r: &pb::GetProjectResponse) {
        if self.json(r, "tether.v1.GetProjectResponse") {
            return;
        }
        let p = r.project.clone().unwrap_or_default();
        let u = r.usage.unwrap_or_default();
        println!("project:  {} ({})", p.project_id, p.name);
        println!("org:      {}", p.organization_id);
        println!("pools:    {}", p.pools.join(","));
        println!("quota:    {}", quota(p.quota.as_ref()));
        println!("in use:   cpu={}m mem={}MB gpus={} allocations={}", u.cpu_millis, u.memory_mb, u.gpus, u.allocations);
    }

    pub fn created_token(&self, r: &pb::CreateTokenResponse) {
        if self.json(r, "tether.v1.CreateTokenResponse") {
            return;
        }
        println!("{}", r.token);
        eprintln!("token id {}, expires {}", r.token_id, ts(&r.expires_at));
    }

    pub fn access_keys<M: Message>(&self, keys: &[pb::AccessKey], whole: &M) {
        let name = std::any::type_name::<M>().rsplit("::").next().unwrap_or_default();
        if self.json(whole, &format!("tether.v1.{name}")) {
            return;
        }
        table(
            &["ACCESS KEY", "ROLE", "CREATED", "REVOKED", "DESCRIPTION"],
            keys.iter()
                .map(|k| {
                    vec![
                        k.access_key_id.clone(),
                        short(pb::Role::try_from(k.role)),
                        ts(&k.created_at),
                        ts(&k.revoked_at),
                        k.description.clone(),
                    ]
                })
                .collect(),
        );
    }

    pub fn tokens(&self, r: &pb::ListTokensResponse) {
        if self.json(r, "tether.v1.ListTokensResponse") {
            return;
        }
        table(
            &["TOKEN", "ROLE", "CREATED", "EXPIRES", "REVOKED", "DESCRIPTION"],
            r.tokens
                .iter()
                .map(|t| {
                    vec![
                        t.token_id.clone(),
                        short(pb::Role::try_from(t.role)),
                        ts(&t.created_at),
                        ts(&t.expires_at),
                        ts(&t.revoked_at),
                        t.description.clone(),
                    ]
                })
                .collect(),
        );
    }

    pub fn created_join_token(&self, r: &pb::CreateJoinTokenResponse) {
        if self.json(r, "tether.v1.CreateJoinTokenResponse") {
            return;
        }
        println!("{}", r.token);
        if let Some(t) = &r.join_token {
            eprintln!("join token id {}, expires {}", t.join_token_id, ts(&t.expires_at));
        }
    }

    pub fn join_tokens(&self, r: &pb::ListJoinTokensResponse) {
        if self.json(r, "tether.v1.ListJoinTokensResponse") {
            return;
        }
        table(
            &["JOIN TOKEN", "USES", "EXPIRES", "REVOKED", "LABELS", "DESCRIPTION"],
            r.join_tokens
                .iter()
                .map(|t| {
                    let max = if t.max_uses == 0 { "∞".to_string() } else { t.max_uses.to_string() };
                    vec![
                        t.join_token_id.clone(),
                        format!("{}/{max}", t.uses),
                        ts(&t.expires_at),
                        ts(&t.revoked_at),
                        labels(&t.labels),
                        t.description.clone(),
                    ]
                })
                .collect(),
        );
    }

    pub fn suggestions(&self, r: &pb::SuggestPlacementResponse) {
        if self.json(r, "tether.v1.SuggestPlacementResponse") {
            return;
        }
        table(
            &["RANK", "NODE", "SCORE", "WHY"],
            r.candidates
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    vec![(i + 1).to_string(), c.node_id.clone(), format!("{:.3}", c.score), c.reasons.join(" ")]
                })
                .collect(),
        );
        if !r.filtered.is_empty() {
            println!();
            table(
                &["FILTERED", "REASON"],
                r.filtered.iter().map(|f| vec![f.node_id.clone(), f.reason.clone()]).collect(),
            );
        }
    }

    pub fn whoami(&self, r: &pb::WhoAmIResponse) {
        if self.json(r, "tether.v1.WhoAmIResponse") {
            return;
        }
        println!("token        {}", r.token_id);
        println!("organization {}", r.organization_id);
        println!("project      {}", r.project_id);
        println!("role         {}", short(pb::Role::try_from(r.role)));
        println!("expires      {}", ts(&r.expires_at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names() {
        assert_eq!(ts(&Some(prost_types::Timestamp { seconds: 0, nanos: 0 })), "1970-01-01 00:00:00");
        assert_eq!(ts(&Some(prost_types::Timestamp { seconds: 1_795_372_469, nanos: 0 })), "2026-11-22 18:34:29");
        assert_eq!(ts(&Some(prost_types::Timestamp { seconds: 951_782_400, nanos: 0 })), "2000-02-29 00:00:00");
        assert_eq!(short(pb::NodeStatus::try_from(2)), "ready");
        assert_eq!(short(pb::DesiredNodeState::try_from(5)), "quarantined");
        let j = to_json(
            &pb::Node { node_id: "nd-1".into(), desired_state_version: 7, ..Default::default() },
            "tether.v1.Node",
        );
        assert_eq!(j["desiredStateVersion"], "7");
        assert_eq!(ids(&j), ["nd-1"]);
        let list = to_json(
            &pb::ListJobsResponse {
                jobs: vec![
                    pb::Job { job_id: "job-a".into(), ..Default::default() },
                    pb::Job { job_id: "job-b".into(), ..Default::default() },
                ],
                ..Default::default()
            },
            "tether.v1.ListJobsResponse",
        );
        assert_eq!(ids(&list), ["job-a", "job-b"]);
        let created = to_json(
            &pb::SubmitJobResponse { job: Some(pb::Job { job_id: "job-c".into(), ..Default::default() }) },
            "tether.v1.SubmitJobResponse",
        );
        assert_eq!(ids(&created), ["job-c"]);
    }
}
