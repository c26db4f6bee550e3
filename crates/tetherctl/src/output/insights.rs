//! Nodes' reliability scores.

use tether_proto::pb;

use super::{Out, table, ts};

impl Out {
    pub fn insights(&self, i: &pb::NodeInsights) {
        if self.json(i, "tether.v1.NodeInsights") {
            return;
        }
        println!("node         {}", i.node_id);
        if !i.scored {
            println!("score        - (not scored yet)");
            return;
        }
        println!("score        {:.3}  ({} beats, at {})", i.score, i.beats, ts(&i.computed_at));
        if i.auto_quarantined_at.is_some() {
            let release = if i.release_at.is_some() { ts(&i.release_at) } else { "once its score is back up".into() };
            println!("quarantined  automatically at {}; release {release}", ts(&i.auto_quarantined_at));
        }
        for r in &i.reasons {
            println!("reason       {r}");
        }
        table(
            &["COMPONENT", "PENALTY", "WEIGHT", "COST", "DETAIL"],
            i.components
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        format!("{:.2}", c.penalty),
                        format!("{:.2}", c.weight),
                        format!("{:.2}", c.penalty * c.weight),
                        c.detail.clone(),
                    ]
                })
                .collect(),
        );
    }

    pub fn risk(&self, r: &pb::ListNodeRiskResponse) {
        if self.json(r, "tether.v1.ListNodeRiskResponse") {
            return;
        }
        table(
            &["NODE", "SCORE", "QUARANTINED", "REASON"],
            r.nodes
                .iter()
                .map(|n| {
                    vec![
                        n.node_id.clone(),
                        format!("{:.3}", n.score),
                        if n.auto_quarantined_at.is_some() { "auto".into() } else { "-".into() },
                        n.reasons.first().cloned().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect(),
        );
    }
}
