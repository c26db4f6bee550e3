//! Metered usage.

use tether_proto::pb;

use super::{Out, table, ts};

impl Out {
    pub fn usage(&self, r: &pb::GetUsageResponse) {
        if self.json(r, "tether.v1.GetUsageResponse") {
            return;
        }
        println!("project             {}", r.project_id);
        println!("period              {} ({} to {})", r.period, ts(&r.period_start), ts(&r.period_end));
        println!("cpu-seconds         {:.3}", r.cpu_seconds);
        println!("memory-mb-seconds   {:.3}", r.memory_mb_seconds);
        println!("gpu-seconds         {:.3}", r.gpu_seconds);
        println!("node-cpu-hours      {:.3}", r.node_cpu_hours);
        println!("node-memory-mb-hours {:.3}", r.node_memory_mb_hours);
        println!("node-gpu-hours      {:.3}", r.node_gpu_hours);
        for i in &r.ingested {
            println!("{:<19} {}", i.metric, i.quantity);
        }
        println!("as of               {}", ts(&r.computed_at));
        if let Some(c) = &r.cost {
            self.cost(c);
        }
    }

    pub fn cost(&self, c: &pb::Cost) {
        if self.json(c, "tether.v1.Cost") {
            return;
        }
        table(
            &["RESOURCE", "QUANTITY", "UNIT PRICE (nanos)", "COST (nanos)"],
            c.lines
                .iter()
                .map(|l| {
                    vec![
                        l.resource.clone(),
                        format!("{:.3}", l.quantity),
                        l.unit_price_nanos.to_string(),
                        l.cost_nanos.to_string(),
                    ]
                })
                .collect(),
        );
        println!("total {:.9} {} (price book version {})", c.total, c.currency, c.price_book_version);
        if !c.unpriced.is_empty() {
            println!("unpriced: {}", c.unpriced.join(", "));
        }
    }

    pub fn payouts(&self, r: &pb::PreviewPayoutsResponse) {
        if self.json(r, "tether.v1.PreviewPayoutsResponse") {
            return;
        }
        table(
            &["NODE", "CPU-SECONDS", "MEMORY-MB-SECONDS", "GROSS (nanos)", "RELIABILITY", "PAYOUT (nanos)"],
            r.payouts
                .iter()
                .map(|p| {
                    vec![
                        p.node_id.clone(),
                        format!("{:.3}", p.cpu_seconds),
                        format!("{:.3}", p.memory_mb_seconds),
                        p.gross_nanos.to_string(),
                        format!("{:.3}", p.reliability),
                        p.payout_nanos.to_string(),
                    ]
                })
                .collect(),
        );
        println!("period {} total {} nanos {}", r.period, r.total_nanos, r.currency);
    }

    pub fn ingested(&self, r: &pb::IngestUsageResponse) {
        if self.json(r, "tether.v1.IngestUsageResponse") {
            return;
        }
        println!("accepted {}, duplicates {}", r.accepted, r.duplicates);
    }

    pub fn summary(&self, r: &pb::GetSummaryResponse) {
        if self.json(r, "tether.v1.GetSummaryResponse") {
            return;
        }
        let line = |m: &std::collections::HashMap<String, u32>| {
            let mut v: Vec<_> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
            v.sort();
            if v.is_empty() { "-".to_string() } else { v.join(", ") }
        };
        println!("period        {}", r.period);
        println!("nodes         {}", line(&r.nodes_by_status));
        println!("desired       {}", line(&r.nodes_by_desired_state));
        println!("quarantined   {} automatically", r.nodes_auto_quarantined);
        for p in &r.pools {
            println!("pool          {}: {} ready of {} desired ({} nodes)", p.name, p.ready, p.desired, p.nodes);
        }
        println!("jobs          {}", line(&r.jobs_by_status));
        println!("cpu-seconds   {:.3}", r.cpu_seconds);
        if let Some(c) = &r.cost {
            println!("cost          {:.9} {}", c.total, c.currency);
        }
    }
}
