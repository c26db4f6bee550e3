//! Usage metering: what a project used in a period (a calendar month, UTC),
//! from its allocations' start and end and from records ingested from
//! elsewhere. Pure: the store reads the rows, this adds them up.

use std::collections::BTreeMap;

use crate::{Error, Resources, UnixMillis};

/// A calendar month, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    pub year: i32,
    /// 1 to 12.
    pub month: u32,
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(if m <= 2 { y - 1 } else { y });
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil (year, month) of days since 1970-01-01.
fn civil_month(days: i64) -> (i32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u32)
}

const DAY_MS: i64 = 86_400_000;

impl Period {
    /// `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Period, Error> {
        let bad = || Error::invalid(format!("period {s:?} is not YYYY-MM"));
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let (year, month): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        // The years the API's pattern allows: every period's bounds are
        // then valid timestamps in JSON too.
        if !(1..=12).contains(&month) || !(1970..=2999).contains(&year) {
            return Err(bad());
        }
        Ok(Period { year, month })
    }

    /// The month `at` falls in.
    pub fn of(at: UnixMillis) -> Period {
        let (year, month) = civil_month(at.div_euclid(DAY_MS));
        Period { year, month }
    }

    pub fn start(&self) -> UnixMillis {
        days_from_civil(self.year, self.month, 1) * DAY_MS
    }

    /// The start of the next month.
    pub fn end(&self) -> UnixMillis {
        let (y, m) = if self.month == 12 { (self.year + 1, 1) } else { (self.year, self.month + 1) };
        days_from_civil(y, m, 1) * DAY_MS
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// One allocation's claim on resources, from its start (None: it never
/// started) to its end (None: still running).
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub resources: Resources,
    pub started_at: Option<UnixMillis>,
    pub finished_at: Option<UnixMillis>,
}

/// A dedicated node's capacity, from its registration.
#[derive(Debug, Clone, PartialEq)]
pub struct Provided {
    pub resources: Resources,
    pub registered_at: UnixMillis,
}

/// A project's usage in a period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub memory_mb_seconds: f64,
    pub gpu_seconds: f64,
    /// Of its dedicated nodes: core-hours, MB-hours and GPU-hours.
    pub node_cpu_hours: f64,
    pub node_memory_mb_hours: f64,
    pub node_gpu_hours: f64,
    /// Ingested figures, summed by metric.
    pub ingested: BTreeMap<String, u64>,
}

/// Milliseconds of [from, to) inside [start, end).
fn overlap(from: UnixMillis, to: UnixMillis, start: UnixMillis, end: UnixMillis) -> i64 {
    (to.min(end) - from.max(start)).max(0)
}

/// Adds up the period's usage as of `now` (running allocations and present
/// nodes count until `now`).
pub fn meter(period: Period, now: UnixMillis, held: &[Held], nodes: &[Provided], ingested: &[(String, u64)]) -> Usage {
    let (start, end) = (period.start(), period.end());
    let mut u = Usage::default();
    for h in held {
        let Some(from) = h.started_at else { continue };
        let secs = overlap(from, h.finished_at.unwrap_or(now), start, end) as f64 / 1000.0;
        u.cpu_seconds += h.resources.cpu_millis as f64 / 1000.0 * secs;
        u.memory_mb_seconds += h.resources.memory_mb as f64 * secs;
        u.gpu_seconds += h.resources.gpus as f64 * secs;
    }
    for n in nodes {
        let hours = overlap(n.registered_at, now, start, end) as f64 / 3_600_000.0;
        u.node_cpu_hours += n.resources.cpu_millis as f64 / 1000.0 * hours;
        u.node_memory_mb_hours += n.resources.memory_mb as f64 * hours;
        u.node_gpu_hours += n.resources.gpus as f64 * hours;
    }
    for (metric, q) in ingested {
        let e = u.ingested.entry(metric.clone()).or_default();
        *e = e.saturating_add(*q);
    }
    u
}

/// One priced figure.
#[derive(Debug, Clone, PartialEq)]
pub struct CostLine {
    pub resource: String,
    pub quantity: f64,
    pub unit_price_nanos: u64,
    /// quantity × unit price, rounded to the nearest billionth.
    pub cost_nanos: i64,
}

/// Figures priced by a price book.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cost {
    pub lines: Vec<CostLine>,
    pub total_nanos: i64,
    /// Figures the book has no price for (in no line, not in the total).
    pub unpriced: Vec<String>,
}

/// Prices `quantities` (resource, quantity) in `tier`; zero quantities are
/// left out.
pub fn price(book: &crate::settings::PriceBook, tier: &str, quantities: &[(String, f64)]) -> Cost {
    let mut c = Cost::default();
    for (resource, q) in quantities {
        if *q == 0.0 {
            continue;
        }
        match book.price(resource, tier) {
            Some(unit) => {
                let cost = (q * unit as f64).round();
                let cost_nanos = if cost >= i64::MAX as f64 { i64::MAX } else { cost as i64 };
                c.total_nanos = c.total_nanos.saturating_add(cost_nanos);
                c.lines.push(CostLine { resource: resource.clone(), quantity: *q, unit_price_nanos: unit, cost_nanos });
            }
            None => c.unpriced.push(resource.clone()),
        }
    }
    c
}

impl Usage {
    /// Adds another's figures to these (an organisation's over its projects).
    pub fn add(&mut self, o: &Usage) {
        self.cpu_seconds += o.cpu_seconds;
        self.memory_mb_seconds += o.memory_mb_seconds;
        self.gpu_seconds += o.gpu_seconds;
        self.node_cpu_hours += o.node_cpu_hours;
        self.node_memory_mb_hours += o.node_memory_mb_hours;
        self.node_gpu_hours += o.node_gpu_hours;
        for (m, q) in &o.ingested {
            let e = self.ingested.entry(m.clone()).or_default();
            *e = e.saturating_add(*q);
        }
    }

    /// The figures by the names the price book uses.
    pub fn quantities(&self) -> Vec<(String, f64)> {
        let mut out = vec![
            ("cpu_seconds".to_string(), self.cpu_seconds),
            ("memory_mb_seconds".to_string(), self.memory_mb_seconds),
            ("gpu_seconds".to_string(), self.gpu_seconds),
            ("node_cpu_hours".to_string(), self.node_cpu_hours),
            ("node_memory_mb_hours".to_string(), self.node_memory_mb_hours),
            ("node_gpu_hours".to_string(), self.node_gpu_hours),
        ];
        out.extend(self.ingested.iter().map(|(m, q)| (m.clone(), *q as f64)));
        out
    }
}

/// What a node provided to work in a period: the allocations it ran, of
/// projects other than its own (a shared node's: all of them).
pub fn provided(period: Period, now: UnixMillis, held: &[Held]) -> Usage {
    meter(period, now, held, &[], &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_calendar_months_in_utc() {
        let p = Period::parse("2026-12").unwrap();
        assert_eq!(p.start(), 1_796_083_200_000, "2026-12-01T00:00:00Z (date -u -d 2026-12-01 +%s)");
        assert_eq!(p.end(), 1_798_761_600_000, "2027-01-01T00:00:00Z");
        assert_eq!(Period::of(p.start()), p);
        assert_eq!(Period::of(p.end() - 1), p);
        assert_eq!(Period::of(p.end()).to_string(), "2027-01");
        assert_eq!(Period::parse("2024-02").unwrap().end() - Period::parse("2024-02").unwrap().start(), 29 * DAY_MS);
        let last = Period::parse("2999-12").unwrap();
        assert_eq!(Period::of(last.end()).to_string(), "3000-01");
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", "2026-00", "1969-12", "3000-01", ""] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usage_counts_only_what_falls_in_the_period() {
        let p = Period::parse("2026-12").unwrap();
        let (s, e) = (p.start(), p.end());
        let r = Resources { cpu_millis: 500, memory_mb: 64, gpus: 1 };
        let held = [
            // 10 s inside.
            Held { resources: r, started_at: Some(s + 1000), finished_at: Some(s + 11_000) },
            // Started the month before: only its 4 s in this one.
            Held { resources: r, started_at: Some(s - 6000), finished_at: Some(s + 4000) },
            // Still running at `now`: 2 s so far.
            Held { resources: r, started_at: Some(e - 3000), finished_at: None },
            // Never started.
            Held { resources: r, started_at: None, finished_at: None },
        ];
        let nodes =
            [Provided { resources: Resources { cpu_millis: 4000, memory_mb: 1024, gpus: 0 }, registered_at: s - 1 }];
        let ingested = [("egress_bytes".to_string(), 10), ("egress_bytes".to_string(), 5)];
        let u = meter(p, e - 1000, &held, &nodes, &ingested);
        assert!((u.cpu_seconds - 0.5 * 16.0).abs() < 1e-9, "{u:?}");
        assert!((u.memory_mb_seconds - 64.0 * 16.0).abs() < 1e-9);
        assert!((u.gpu_seconds - 16.0).abs() < 1e-9);
        let hours = (e - 1000 - s) as f64 / 3_600_000.0;
        assert!((u.node_cpu_hours - 4.0 * hours).abs() < 1e-6);
        assert_eq!(u.ingested["egress_bytes"], 15);
    }

    #[test]
    fn prices_fall_back_to_the_default_tier_and_name_what_is_unpriced() {
        use crate::settings::{Price, PriceBook};
        let p = |resource: &str, tier: &str, unit_price_nanos| Price {
            resource: resource.into(),
            tier: tier.into(),
            unit_price_nanos,
        };
        let book = PriceBook {
            currency: String::new(),
            prices: vec![p("cpu_seconds", "", 11_000), p("storage_bytes", "", 20), p("storage_bytes", "archive", 4)],
        };
        assert_eq!(book.currency(), "USD");
        let q =
            [("cpu_seconds".to_string(), 7.5), ("storage_bytes".to_string(), 1e9), ("egress_bytes".to_string(), 3.0)];
        let c = price(&book, "archive", &q);
        assert_eq!(c.lines[0].cost_nanos, 82_500, "7.5 x 11,000");
        assert_eq!(
            (c.lines[1].unit_price_nanos, c.lines[1].cost_nanos),
            (4, 4_000_000_000),
            "the archive tier's price"
        );
        assert_eq!(c.total_nanos, 4_000_082_500);
        assert_eq!(c.unpriced, ["egress_bytes"]);
        assert_eq!(price(&book, "active", &q).lines[1].unit_price_nanos, 20, "no active price: the default tier's");
    }
}
