//! Pools and their scale requests.

use tether_proto::pb;

use super::{Out, short, table, ts};

fn res(r: &Option<pb::Resources>) -> (i64, i64) {
    let r = r.unwrap_or_default();
    (r.cpu_millis, r.memory_mb)
}

fn provider(p: &pb::Pool) -> String {
    match p.spec.as_ref().and_then(|s| s.provider.as_ref()) {
        Some(pb::PoolProvider { webhook: Some(w), .. }) => format!("webhook {}", w.url),
        Some(pb::PoolProvider { command: Some(c), .. }) => format!("command {}", c.name),
        _ => "-".into(),
    }
}

impl Out {
    pub fn pools(&self, r: &pb::ListPoolsResponse) {
        if self.json(r, "tether.v1.ListPoolsResponse") {
            return;
        }
        table(
            &["POOL", "MANAGED", "DESIRED", "NODES", "READY", "CPU(m) USED/TOTAL", "ADDING", "REMOVING", "PROVIDER"],
            r.pools
                .iter()
                .map(|p| {
                    let ((cc, _), (ac, _)) = (res(&p.capacity), res(&p.allocated));
                    vec![
                        p.name.clone(),
                        if p.managed { "yes".into() } else { "no".into() },
                        if p.managed { p.desired.to_string() } else { "-".into() },
                        p.nodes.to_string(),
                        p.ready.to_string(),
                        format!("{ac}/{cc}"),
                        p.adding.to_string(),
                        p.removing.to_string(),
                        provider(p),
                    ]
                })
                .collect(),
        );
    }

    pub fn pool(&self, r: &pb::GetPoolResponse) {
        if self.json(r, "tether.v1.GetPoolResponse") {
            return;
        }
        let p = r.pool.clone().unwrap_or_default();
        let spec = p.spec.clone().unwrap_or_default();
        let ((cc, cm), (ac, am)) = (res(&p.capacity), res(&p.allocated));
        println!("pool        {}", p.name);
        if !p.managed {
            println!("managed     no (its nodes name it; no record)");
        } else {
            println!("desired     {} (min {}, max {}), version {}", p.desired, spec.min, spec.max, p.version);
            println!("provider    {}", provider(&p));
            if let Some(a) = spec.autoscale.as_ref().filter(|a| a.enabled) {
                println!(
                    "autoscale   {} (target {}%, cooldown {}s, steps +{}/-{}, canary {}%)",
                    short(pb::AutoscaleMetric::try_from(a.metric)),
                    a.target_percent,
                    a.cooldown.map_or(0, |d| d.seconds),
                    a.max_step_up,
                    a.max_step_down,
                    a.canary_percent
                );
            }
            println!("scaled      {}", ts(&p.scaled_at));
        }
        println!("nodes       {} ({} ready)", p.nodes, p.ready);
        println!("cpu (m)     {ac} of {cc} allocated");
        println!("memory (MB) {am} of {cm} allocated");
        println!("adding      {}, removing {}", p.adding, p.removing);
        if !p.provider_error.is_empty() {
            println!("provider    failing: {}", p.provider_error);
        }
        if !r.requests.is_empty() {
            println!();
            self.scale_requests(&pb::ListScaleRequestsResponse { requests: r.requests.clone() });
        }
    }

    pub fn scale_requests(&self, r: &pb::ListScaleRequestsResponse) {
        if self.json(r, "tether.v1.ListScaleRequestsResponse") {
            return;
        }
        table(
            &["REQUEST", "ACTION", "COUNT", "STATE", "NODES", "CREATED", "DEADLINE", "REASON"],
            r.requests
                .iter()
                .map(|q| {
                    vec![
                        q.id.clone(),
                        short(pb::ScaleAction::try_from(q.action)),
                        q.count.to_string(),
                        short(pb::ScaleRequestState::try_from(q.state)),
                        q.node_ids.len().to_string(),
                        ts(&q.created_at),
                        ts(&q.deadline),
                        q.reason.clone(),
                    ]
                })
                .collect(),
        );
    }
}
