//! The latest report of each stream-connected node, as its agent forwarded
//! it with a beat: kept in memory only (a heartbeat is not a database
//! write), shown by `GetNode` and exported as Prometheus series per node.
//! After a restart a node's report returns with its next session's first
//! beat, which always carries it.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::RwLock;

use tether_types::{NodeId, NodeReport, UnixMillis};

/// Most report series `/metrics` exports in all; nodes beyond it (by id
/// order) are counted in `tether_node_report_series_dropped` instead. With
/// at most 32 gauges and 32 counters per node, about 300 fully reporting
/// nodes fit.
pub const MAX_SERIES: usize = 20_000;

#[derive(Default)]
pub struct NodeReports {
    latest: RwLock<HashMap<NodeId, (NodeReport, UnixMillis)>>,
}

impl NodeReports {
    pub fn put(&self, node: &NodeId, report: NodeReport, at: UnixMillis) {
        self.latest.write().unwrap_or_else(|p| p.into_inner()).insert(node.clone(), (report, at));
    }

    pub fn get(&self, node: &NodeId) -> Option<(NodeReport, UnixMillis)> {
        self.latest.read().unwrap_or_else(|p| p.into_inner()).get(node).cloned()
    }

    /// A deregistered node's report goes with it.
    pub fn remove(&self, node: &NodeId) {
        self.latest.write().unwrap_or_else(|p| p.into_inner()).remove(node);
    }

    /// The Prometheus text for every report, at most `max_series` series.
    pub fn render(&self, max_series: usize) -> String {
        let latest = self.latest.read().unwrap_or_else(|p| p.into_inner());
        let mut nodes: Vec<_> = latest.iter().collect();
        nodes.sort_by(|a, b| a.0.cmp(b.0));
        let (mut health, mut gauges, mut counters) = (String::new(), String::new(), String::new());
        let (mut series, mut dropped) = (0usize, 0usize);
        for (id, (r, _)) in nodes {
            let n = usize::from(!r.health.is_empty()) + r.gauges.len() + r.counters.len();
            if series + n > max_series {
                dropped += n;
                continue;
            }
            series += n;
            // Ids and names are checked on arrival: no escaping is needed.
            if !r.health.is_empty() {
                for state in tether_types::report::HEALTH_VALUES {
                    let v = u8::from(state == r.health);
                    let _ = writeln!(health, "tether_node_health{{node=\"{id}\",state=\"{state}\"}} {v}");
                }
            }
            for (name, v) in &r.gauges {
                let _ = writeln!(gauges, "tether_node_reported_value{{node=\"{id}\",name=\"{name}\"}} {v}");
            }
            for (name, v) in &r.counters {
                let _ = writeln!(counters, "tether_node_reported_total{{node=\"{id}\",name=\"{name}\"}} {v}");
            }
        }
        let mut out = String::new();
        for (metric, kind, help, body) in [
            ("tether_node_health", "gauge", "A node's reported health: 1 for its current state", &health),
            ("tether_node_reported_value", "gauge", "A gauge a node reported, by name", &gauges),
            ("tether_node_reported_total", "counter", "A counter a node reported, by name", &counters),
        ] {
            if !body.is_empty() {
                let _ = write!(out, "# HELP {metric} {help}.\n# TYPE {metric} {kind}\n{body}");
            }
        }
        let _ = write!(
            out,
            "# HELP tether_node_report_series_dropped Report series not exported: past the cap of {max_series}.\n\
             # TYPE tether_node_report_series_dropped gauge\ntether_node_report_series_dropped {dropped}\n"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_per_node_and_capped() {
        let r = NodeReports::default();
        let report = |h: &str, g: usize| NodeReport {
            health: h.into(),
            gauges: (0..g).map(|i| (format!("g{i}"), i as f64)).collect(),
            counters: [("served".to_string(), 7.0)].into(),
            ..Default::default()
        };
        let a = NodeId::from_random([1; 10]);
        let b = NodeId::from_random([2; 10]);
        r.put(&a, report("failing", 2), 1);
        r.put(&b, report("", 3), 1);
        let text = r.render(100);
        assert!(text.contains(&format!("tether_node_health{{node=\"{a}\",state=\"failing\"}} 1")), "{text}");
        assert!(text.contains(&format!("tether_node_health{{node=\"{a}\",state=\"ok\"}} 0")), "{text}");
        assert!(!text.contains(&format!("tether_node_health{{node=\"{b}\"")), "no health reported: {text}");
        assert!(text.contains(&format!("tether_node_reported_value{{node=\"{b}\",name=\"g2\"}} 2")), "{text}");
        assert!(text.contains(&format!("tether_node_reported_total{{node=\"{a}\",name=\"served\"}} 7")));
        assert!(text.contains("tether_node_report_series_dropped 0"));
        // a has 4 series, b 4: a cap of 5 keeps a and drops b's.
        let text = r.render(5);
        assert!(text.contains(&a.to_string()) && !text.contains(&b.to_string()), "{text}");
        assert!(text.contains("tether_node_report_series_dropped 4"), "{text}");
        r.remove(&a);
        assert!(!r.render(100).contains(&a.to_string()));
    }
}
