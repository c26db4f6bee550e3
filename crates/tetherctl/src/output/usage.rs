//! Metered usage.

use tether_proto::pb;

use super::{Out, ts};

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
    }

    pub fn ingested(&self, r: &pb::IngestUsageResponse) {
        if self.json(r, "tether.v1.IngestUsageResponse") {
            return;
        }
        println!("accepted {}, duplicates {}", r.accepted, r.duplicates);
    }
}
