//! What one caller may take of the operator APIs: a token bucket per
//! principal, a cap on concurrent calls per service, and a time limit per
//! call. Checked by the edge layer before a handler runs, for gRPC and REST
//! alike (REST calls pass the same edge in-process), on `tether.v1`
//! services only: the agent protocol has its own admission control.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::{VerifiedToken, bearer_token};

/// What a bearer token verifiably grants (its signature and expiry check
/// out), if anything.
pub type Identify = Box<dyn Fn(&str) -> Option<tether_auth::Claims> + Send + Sync>;

/// The settings, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    /// Calls per second each principal may make, on average; 0: no limit.
    pub rate: u32,
    /// Calls a principal may make at once after a quiet spell.
    pub burst: u32,
    /// Calls in progress per service at most; more are refused.
    pub service_concurrency: usize,
    /// Time a call's handler may take to answer (a stream: to open).
    pub request_timeout: Duration,
}

/// Forget idle principals' buckets every this many calls, so that the map
/// does not grow with every principal ever seen.
const RETAIN_EVERY: u64 = 4096;

pub struct Limits {
    settings: LimitSettings,
    buckets: Option<DefaultKeyedRateLimiter<String>>,
    services: HashMap<String, Arc<Semaphore>>,
    identify: Identify,
    calls: AtomicU64,
}

/// A refusal, as a gRPC status (with `retry-after` in seconds when
/// retrying later helps).
pub type Refusal = tonic::Status;

impl Limits {
    pub fn new(settings: LimitSettings, identify: Identify, services: impl IntoIterator<Item = String>) -> Self {
        let buckets = NonZeroU32::new(settings.rate).map(|rate| {
            let burst = NonZeroU32::new(settings.burst.max(settings.rate)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let services =
            services.into_iter().map(|s| (s, Arc::new(Semaphore::new(settings.service_concurrency)))).collect();
        Limits { settings, buckets, services, identify, calls: AtomicU64::new(0) }
    }

    pub fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
    }

    /// Whether a call to `path` by the sender of `req` may go ahead now; the
    /// permit holds its place in the service's concurrency until dropped.
    /// A verified bearer token is left in the request's extensions for the
    /// authenticator ([`VerifiedToken`]).
    pub fn admit<B>(&self, path: &str, req: &mut http::Request<B>) -> Result<Option<OwnedSemaphorePermit>, Refusal> {
        let Some(service) = path.strip_prefix('/').and_then(|p| p.split_once('/')).map(|(s, _)| s) else {
            return Ok(None);
        };
        if !service.starts_with("tether.v1.") {
            return Ok(None);
        }
        if let Some(buckets) = &self.buckets {
            let who = self.principal(&mut *req);
            if let Err(not_until) = buckets.check_key(&who) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                metrics::counter!("tether_rate_limited_total").increment(1);
                return Err(refusal(
                    format!(
                        "rate limit: {who} may make {} calls per second (bursts of {}); retry in {} ms",
                        self.settings.rate,
                        self.settings.burst.max(self.settings.rate),
                        wait.as_millis().max(1)
                    ),
                    wait,
                ));
            }
            if self.calls.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
                buckets.retain_recent();
            }
        }
        let Some(slots) = self.services.get(service) else { return Ok(None) };
        match slots.clone().try_acquire_owned() {
            Ok(p) => Ok(Some(p)),
            Err(_) => {
                metrics::counter!("tether_service_saturated_total").increment(1);
                Err(refusal(
                    format!(
                        "{service} is at its limit of {} calls in progress; retry shortly",
                        self.settings.service_concurrency
                    ),
                    Duration::from_secs(1),
                ))
            }
        }
    }

    /// Who a bucket is for: the verified token's id, or the peer's address
    /// (a forged or missing credential cannot spend another's bucket).
    fn principal<B>(&self, req: &mut http::Request<B>) -> String {
        if let Some(k) = req.extensions().get::<crate::auth::AccessKeyCaller>() {
            return k.id.to_string();
        }
        if let Some(claims) = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .and_then(|t| (self.identify)(t))
        {
            let id = claims.token_id.to_string();
            req.extensions_mut().insert(VerifiedToken(claims));
            return id;
        }
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        let ext = req.extensions();
        let addr = ext
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| ext.get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|t| t.get_ref().remote_addr()));
        match addr {
            Some(addr) => format!("address {}", addr.ip()),
            None => "anonymous".into(),
        }
    }
}

fn refusal(message: String, retry_after: Duration) -> Refusal {
    let mut s = tonic::Status::resource_exhausted(message);
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    if let Ok(v) = secs.max(1).to_string().parse() {
        s.metadata_mut().insert("retry-after", v);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, concurrency: usize) -> Limits {
        let settings =
            LimitSettings { rate, burst, service_concurrency: concurrency, request_timeout: Duration::from_secs(1) };
        // Tokens "good-<n>" verify, as token n.
        let identify: Identify = Box::new(|t: &str| {
            let n: u8 = t.strip_prefix("good-")?.parse().ok()?;
            Some(tether_auth::Claims {
                token_id: tether_types::TokenId::from_random([n; 10]),
                kind: tether_auth::CredentialKind::Operator,
                org: None,
                project: None,
                role: tether_types::Role::Viewer,
                org_role: None,
                node: None,
                workload: None,
                read_only: false,
                expires_at: None,
                key_id: 0,
            })
        });
        Limits::new(settings, identify, ["tether.v1.JobService".to_owned()])
    }

    fn req(token: &str) -> http::Request<()> {
        http::Request::builder().header("authorization", format!("Bearer {token}")).body(()).unwrap()
    }

    #[test]
    fn a_principal_gets_its_burst_then_waits_and_others_are_untouched() {
        let l = limits(1, 3, 100);
        let path = "/tether.v1.JobService/ListJobs";
        for _ in 0..3 {
            l.admit(path, &mut req("garbage-a")).unwrap();
        }
        let err = l.admit(path, &mut req("garbage-a")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.metadata().get("retry-after").is_some());
        // Unverifiable credentials share the sender's bucket, never a token's.
        assert!(l.admit(path, &mut req("garbage-b")).is_err());
        for _ in 0..3 {
            l.admit(path, &mut req("good-1")).unwrap();
        }
        assert!(l.admit(path, &mut req("good-1")).is_err());
        l.admit(path, &mut req("good-2")).unwrap();
        // The agent protocol is not counted.
        l.admit("/tether.agent.v1.AgentService/Enroll", &mut req("garbage-a")).unwrap();
    }

    #[test]
    fn a_service_at_its_concurrency_refuses_until_a_call_ends() {
        let l = limits(0, 0, 2);
        let path = "/tether.v1.JobService/ListJobs";
        let a = l.admit(path, &mut req("x")).unwrap();
        let _b = l.admit(path, &mut req("x")).unwrap();
        assert_eq!(l.admit(path, &mut req("x")).unwrap_err().code(), tonic::Code::ResourceExhausted);
        drop(a);
        l.admit(path, &mut req("x")).unwrap();
    }
}
