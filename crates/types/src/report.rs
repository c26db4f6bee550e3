//! The report an HTTP agent posts with each signed heartbeat: the
//! installations system's payload (instance, version, health, backups,
//! alerts, job failures, SLO figures).

use serde::{Deserialize, Serialize};
use tether_proto::pb;

use crate::{Error, UnixMillis, millis_to_timestamp};

/// Longest text field of a report.
const MAX_FIELD: usize = 255;
/// Longest alert or failure message.
const MAX_MESSAGE: usize = 1024;
/// Most alerts, and most job failures, in one report.
const MAX_ITEMS: usize = 64;

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
    #[serde(default)]
    pub health: String,
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
        Ok(r)
    }

    pub fn to_pb(&self, reported_at: UnixMillis) -> pb::NodeReport {
        pb::NodeReport {
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
        let long = format!(r#"{{"version": "{}"}}"#, "x".repeat(300));
        assert!(NodeReport::parse(long.as_bytes()).is_err());
    }
}
