//! What a node reports about itself beyond liveness: the installations
//! system's payload (instance, version, health, backups, alerts, job
//! failures, SLO figures) and named gauges and counters. An HTTP agent posts
//! it with each signed heartbeat; a stream agent forwards what the node's
//! applications told it (`tether-agent report`, or its unix socket) with its
//! next beat.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tether_proto::pb;

use crate::{Error, UnixMillis, millis_to_timestamp};

/// Longest text field of a report.
const MAX_FIELD: usize = 255;
/// Longest alert or failure message.
const MAX_MESSAGE: usize = 1024;
/// Most alerts, and most job failures, in one report.
const MAX_ITEMS: usize = 64;
/// Most gauges, and most counters, in one report: a node's series are bounded.
pub const MAX_METRICS: usize = 32;
/// Longest metric name.
const MAX_METRIC_NAME: usize = 64;

/// The health values a report may carry (or none).
pub const HEALTH_VALUES: [&str; 3] = ["ok", "degraded", "failing"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub release_channel: String,
    /// `ok`, `degraded`, `failing`, or empty (not reported).
    #[serde(default)]
    pub health: String,
    /// Why, when not ok.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_message: String,
    #[serde(default)]
    pub backup_status: String,
    /// RFC 3339, as the agent sent it (checked on arrival).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_at: Option<String>,
    #[serde(default)]
    pub alerts: Vec<ReportAlert>,
    #[serde(default)]
    pub job_failures: Vec<ReportJobFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_webhook_retry_rate: Option<f64>,
    /// Named values that go up and down (queue depth, error rate).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gauges: BTreeMap<String, f64>,
    /// Named totals that only grow (requests served, retries).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counters: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportAlert {
    #[serde(default)]
    pub level: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportJobFailure {
    #[serde(default)]
    pub queue: String,
    #[serde(default)]
    pub message: String,
}

fn text(field: &str, v: &str, max: usize) -> Result<(), Error> {
    if v.len() > max {
        return Err(Error::invalid(format!("{field} is longer than {max} bytes")));
    }
    if v.contains('\0') {
        return Err(Error::invalid(format!("{field} contains NUL")));
    }
    Ok(())
}

/// A gauge or counter name: a Prometheus-style name, lower case.
pub fn check_metric_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_METRIC_NAME
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "metric name {name:?} must match [a-z_][a-z0-9_]* and be at most {MAX_METRIC_NAME} characters"
        )))
    }
}

fn parse_rfc3339_ms(s: &str) -> Option<UnixMillis> {
    let t = humantime::parse_rfc3339(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

impl NodeReport {
    /// Parses and checks a posted report: known fields only, bounded sizes,
    /// a valid time, finite non-negative SLO figures.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let r: NodeReport =
            serde_json::from_slice(body).map_err(|e| Error::invalid(format!("the report is not valid: {e}")))?;
        r.check()?;
        Ok(r)
    }

    /// The bounds every report is held to, however it arrived.
    pub fn check(&self) -> Result<(), Error> {
        let r = self;
        for (field, v) in [
            ("instance_id", &r.instance_id),
            ("domain", &r.domain),
            ("client", &r.client),
            ("version", &r.version),
            ("release_channel", &r.release_channel),
            ("health", &r.health),
            ("backup_status", &r.backup_status),
        ] {
            text(field, v, MAX_FIELD)?;
        }
        if let Some(t) = &r.last_backup_at
            && parse_rfc3339_ms(t).is_none()
        {
            return Err(Error::invalid("last_backup_at is not an RFC 3339 time such as 2026-02-11T02:00:00Z"));
        }
        if r.alerts.len() > MAX_ITEMS || r.job_failures.len() > MAX_ITEMS {
            return Err(Error::invalid(format!(
                "a report holds at most {MAX_ITEMS} alerts and {MAX_ITEMS} job failures"
            )));
        }
        for a in &r.alerts {
            text("alerts.level", &a.level, MAX_FIELD)?;
            text("alerts.message", &a.message, MAX_MESSAGE)?;
        }
        for f in &r.job_failures {
            text("job_failures.queue", &f.queue, MAX_FIELD)?;
            text("job_failures.message", &f.message, MAX_MESSAGE)?;
        }
        for (field, v) in [
            ("slo_p95_ms", r.slo_p95_ms),
            ("slo_error_rate", r.slo_error_rate),
            ("slo_webhook_retry_rate", r.slo_webhook_retry_rate),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(Error::invalid(format!("{field} must be a finite number, at least 0")));
            }
        }
        if !r.health.is_empty() && !HEALTH_VALUES.contains(&r.health.as_str()) {
            return Err(Error::invalid(format!("health must be one of ok, degraded, failing, not {:?}", r.health)));
        }
        text("health_message", &r.health_message, MAX_MESSAGE)?;
        for (kind, m) in [("gauges", &r.gauges), ("counters", &r.counters)] {
            if m.len() > MAX_METRICS {
                return Err(Error::invalid(format!("a report holds at most {MAX_METRICS} {kind}")));
            }
            for (name, v) in m {
                check_metric_name(name)?;
                if !v.is_finite() {
                    return Err(Error::invalid(format!("{kind}.{name} must be a finite number")));
                }
                if kind == "counters" && *v < 0.0 {
                    return Err(Error::invalid(format!("counters.{name} must be at least 0")));
                }
            }
        }
        Ok(())
    }

    /// Reads a report as the agent protocol carries it, checked.
    pub fn from_pb(p: &pb::NodeReport) -> Result<Self, Error> {
        let r = NodeReport {
            instance_id: p.instance_id.clone(),
            domain: p.domain.clone(),
            client: p.client.clone(),
            version: p.version.clone(),
            release_channel: p.release_channel.clone(),
            health: p.health.clone(),
            health_message: p.health_message.clone(),
            backup_status: p.backup_status.clone(),
            last_backup_at: p.last_backup_at.as_ref().map(|t| {
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_millis(crate::timestamp_to_millis(t).max(0) as u64),
                )
                .to_string()
            }),
            alerts: p
                .alerts
                .iter()
                .map(|a| ReportAlert { level: a.level.clone(), message: a.message.clone() })
                .collect(),
            job_failures: p
                .job_failures
                .iter()
                .map(|f| ReportJobFailure { queue: f.queue.clone(), message: f.message.clone() })
                .collect(),
            slo_p95_ms: p.slo_p95_ms,
            slo_error_rate: p.slo_error_rate,
            slo_webhook_retry_rate: p.slo_webhook_retry_rate,
            gauges: p.gauges.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            counters: p.counters.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        };
        r.check()?;
        Ok(r)
    }

    /// Applies `update` on top: fields it sets replace these, its gauges and
    /// counters are merged in by name (several applications report to one
    /// agent), and `clear` names gauges or counters to drop.
    pub fn merge(&mut self, update: NodeReport, clear: &[String]) {
        macro_rules! take {
            ($($f:ident),*) => {$(
                if !update.$f.is_empty() {
                    self.$f = update.$f;
                }
            )*};
        }
        take!(instance_id, domain, client, version, release_channel, backup_status, alerts, job_failures);
        if !update.health.is_empty() {
            self.health = update.health;
            self.health_message = update.health_message;
        }
        if update.last_backup_at.is_some() {
            self.last_backup_at = update.last_backup_at;
        }
        for (mine, theirs) in [
            (&mut self.slo_p95_ms, update.slo_p95_ms),
            (&mut self.slo_error_rate, update.slo_error_rate),
            (&mut self.slo_webhook_retry_rate, update.slo_webhook_retry_rate),
        ] {
            if theirs.is_some() {
                *mine = theirs;
            }
        }
        self.gauges.extend(update.gauges);
        self.counters.extend(update.counters);
        for name in clear {
            self.gauges.remove(name);
            self.counters.remove(name);
        }
    }

    pub fn to_pb(&self, reported_at: UnixMillis) -> pb::NodeReport {
        pb::NodeReport {
            health_message: self.health_message.clone(),
            gauges: self.gauges.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            counters: self.counters.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            instance_id: self.instance_id.clone(),
            domain: self.domain.clone(),
            client: self.client.clone(),
            version: self.version.clone(),
            release_channel: self.release_channel.clone(),
            health: self.health.clone(),
            backup_status: self.backup_status.clone(),
            last_backup_at: self.last_backup_at.as_deref().and_then(parse_rfc3339_ms).map(millis_to_timestamp),
            alerts: self
                .alerts
                .iter()
                .map(|a| pb::NodeReportAlert { level: a.level.clone(), message: a.message.clone() })
                .collect(),
            job_failures: self
                .job_failures
                .iter()
                .map(|f| pb::NodeReportJobFailure { queue: f.queue.clone(), message: f.message.clone() })
                .collect(),
            slo_p95_ms: self.slo_p95_ms,
            slo_error_rate: self.slo_error_rate,
            slo_webhook_retry_rate: self.slo_webhook_retry_rate,
            reported_at: Some(millis_to_timestamp(reported_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installations_payload_parses() {
        let body = br#"{
            "instance_id": "acme-001", "domain": "acme.com", "client": "Acme SA", "version": "1.2.3",
            "release_channel": "stable", "health": "ok", "backup_status": "ok",
            "last_backup_at": "2026-02-11T02:00:00Z",
            "alerts": [{"level":"warning","message":"Low disk"}],
            "job_failures": [{"queue":"billing","message":"Timeout"}],
            "slo_p95_ms": 120.5, "slo_error_rate": 0.01
        }"#;
        let r = NodeReport::parse(body).unwrap();
        assert_eq!(r.alerts[0].message, "Low disk");
        let pb = r.to_pb(5);
        assert_eq!(pb.last_backup_at.unwrap().seconds, 1_770_775_200);
        assert_eq!(pb.slo_p95_ms, Some(120.5));
        assert_eq!(pb.slo_webhook_retry_rate, None);
    }

    #[test]
    fn updates_merge_and_survive_the_protocol() {
        let mut r = NodeReport::parse(br#"{"health": "ok", "gauges": {"queue_depth": 3, "error_rate": 0.5}}"#).unwrap();
        let update = NodeReport::parse(
            br#"{"health": "failing", "health_message": "db down", "gauges": {"error_rate": 0.9},
                 "counters": {"served": 10}, "last_backup_at": "2026-02-11T02:00:00Z"}"#,
        )
        .unwrap();
        r.merge(update, &["queue_depth".into()]);
        assert_eq!((r.health.as_str(), r.health_message.as_str()), ("failing", "db down"));
        assert_eq!(r.gauges, BTreeMap::from([("error_rate".into(), 0.9)]));
        assert_eq!(r.counters["served"], 10.0);
        // An update without health keeps it.
        r.merge(NodeReport { version: "2".into(), ..Default::default() }, &[]);
        assert_eq!(r.health, "failing");
        let back = NodeReport::from_pb(&r.to_pb(7)).unwrap();
        assert_eq!(back.gauges, r.gauges);
        assert_eq!(back.to_pb(7).last_backup_at, r.to_pb(7).last_backup_at);
        assert_eq!(back.health_message, "db down");
    }

    #[test]
    fn bad_reports_are_refused_with_the_reason() {
        for (body, says) in [
            (&br#"{"instance_id": "a", "colour": "red"}"#[..], "unknown field"),
            (br#"{"last_backup_at": "yesterday"}"#, "RFC 3339"),
            (br#"{"slo_error_rate": -1}"#, "at least 0"),
            (br#"not json"#, "not valid"),
        ] {
            let e = NodeReport::parse(body).unwrap_err();
            assert!(e.message.contains(says), "{}: {}", String::from_utf8_lossy(body), e.message);
        }
        for (body, says) in [
            (&br#"{"health": "sad"}"#[..], "ok, degraded, failing"),
            (br#"{"gauges": {"Queue-Depth": 1}}"#, "must match"),
            (br#"{"counters": {"served": -1}}"#, "at least 0"),
        ] {
            let e = NodeReport::parse(body).unwrap_err();
            assert!(e.message.contains(says), "{}: {}", String::from_utf8_lossy(body), e.message);
        }
        let many: BTreeMap<String, f64> = (0..=MAX_METRICS).map(|i| (format!("g{i}"), 1.0)).collect();
        let r = NodeReport { gauges: many, ..Default::default() };
        assert!(r.check().unwrap_err().message.contains("at most 32 gauges"));
        let long = format!(r#"{{"version": "{}"}}"#, "x".repeat(300));
        assert!(NodeReport::parse(long.as_bytes()).is_err());
    }
}
