//! The event log and runtime settings.

use std::io::Write;

use tether_proto::pb;

use super::{Format, Out, table, to_json, ts};

impl Out {
    pub fn events(&self, r: &pb::ListEventsResponse) {
        if self.json(r, "tether.v1.ListEventsResponse") {
            return;
        }
        table(
            &["SEQ", "TIME", "KIND", "SUBJECT", "PRINCIPAL"],
            r.events
                .iter()
                .map(|e| {
                    vec![
                        e.sequence.to_string(),
                        ts(&e.time),
                        e.kind.clone(),
                        e.subject.clone(),
                        if e.principal.is_empty() { "-".into() } else { e.principal.clone() },
                    ]
                })
                .collect(),
        );
        if r.next_sequence != 0 {
            println!("more: --after {}", r.next_sequence);
        }
    }

    /// One watched event, as it arrives: a line of JSON with `-o json`.
    pub fn event(&self, e: &pb::WatchEventsResponse) {
        if self.format != Format::Table {
            println!("{}", to_json(e, "tether.v1.WatchEventsResponse"));
        } else {
            let ev = e.event.clone().unwrap_or_default();
            println!("{:>6}  {:<24} {:<26} {}", e.sequence, ts(&ev.time), ev.kind, ev.subject);
        }
        let _ = std::io::stdout().flush();
    }

    pub fn settings(&self, r: &pb::GetSettingsResponse) {
        if self.json(r, "tether.v1.GetSettingsResponse") {
            return;
        }
        let fleet = |s: &Option<pb::Settings>| s.as_ref().and_then(|s| s.fleet).unwrap_or_default();
        let ttl = |f: &pb::FleetSettings| match (&f.stale_node_ttl, f.keep_down_nodes) {
            (_, true) => "never".to_string(),
            (Some(d), _) => {
                humantime::format_duration(std::time::Duration::new(d.seconds.max(0) as u64, 0)).to_string()
            }
            (None, _) => "default".to_string(),
        };
        println!("version         {}", r.version);
        if r.version > 0 {
            println!("updated         {} by {}", ts(&r.updated_at), r.updated_by);
        }
        println!("stale-node-ttl  {} (in effect: {})", ttl(&fleet(&r.settings)), ttl(&fleet(&r.effective)));
        let dur = |d: &Option<prost_types::Duration>| match d {
            Some(d) => humantime::format_duration(tether_types::duration_from_pb(d)).to_string(),
            None => "default".to_string(),
        };
        let pct = |v: u32| if v == 0 { "default".to_string() } else { format!("{v}%") };
        let sc = |s: &Option<pb::Settings>| s.as_ref().and_then(|s| s.scoring).unwrap_or_default();
        let (set, eff) = (sc(&r.settings), sc(&r.effective));
        println!("latency-target  {} (in effect: {})", dur(&set.latency_target), dur(&eff.latency_target));
        println!("uptime-ramp     {} (in effect: {})", dur(&set.uptime_ramp), dur(&eff.uptime_ramp));
        println!("flap-half-life  {} (in effect: {})", dur(&set.flap_half_life), dur(&eff.flap_half_life));
        println!("failure-window  {} (in effect: {})", dur(&set.failure_window), dur(&eff.failure_window));
        let q = |s: &Option<pb::Settings>| s.as_ref().and_then(|s| s.quarantine).unwrap_or_default();
        let (set, eff) = (q(&r.settings), q(&r.effective));
        println!("quarantine      {}", if eff.enabled { "on" } else { "off" });
        println!("  below         {} (in effect: {})", pct(set.below_percent), pct(eff.below_percent));
        println!("  release       {} (in effect: {})", pct(set.release_percent), pct(eff.release_percent));
        println!("  probation     {} (in effect: {})", dur(&set.probation), dur(&eff.probation));
        println!("  max           {} (in effect: {})", pct(set.max_percent), pct(eff.max_percent));
    }
}
