//! What the agent learns about its host from /proc, sysfs and statvfs.

#![allow(unsafe_code)] // statvfs and getifaddrs have no safe std equivalent.

use std::path::Path;

use tether_proto::pb;

pub fn capabilities(state_dir: &Path, hostname: Option<&str>) -> pb::NodeCapabilities {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    pb::NodeCapabilities {
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        hostname: hostname.map(str::to_owned).unwrap_or_else(|| read("/proc/sys/kernel/hostname")),
        addresses: addresses(),
        cpu_count: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        memory_mb: meminfo_kb("MemTotal").unwrap_or(0) / 1024,
        disk_mb: statvfs(state_dir).map(|(total, _)| total / (1024 * 1024)).unwrap_or(0),
        gpus: gpus(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        kernel_version: read("/proc/sys/kernel/osrelease"),
    }
}

fn meminfo_kb(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// (total bytes, available bytes) of the filesystem holding `path`.
fn statvfs(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    Some((s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize))
}

/// Non-loopback IPv4 and IPv6 addresses of all interfaces.
fn addresses() -> Vec<String> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` points into the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and its family tells its layout.
        let ip: Option<std::net::IpAddr> = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)).into())
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(std::net::Ipv6Addr::from(sa.sin6_addr.s6_addr).into())
                }
                _ => None,
            }
        };
        if let Some(ip) = ip
            && !ip.is_loopback()
        {
            let s = ip.to_string();
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.truncate(64);
    out
}

/// NVIDIA GPUs as the driver lists them in procfs.
fn gpus() -> Vec<pb::Gpu> {
    let Ok(dir) = std::fs::read_dir("/proc/driver/nvidia/gpus") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("information")).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_owned()))
                .map(|model| pb::Gpu { model, memory_mb: 0 })
        })
        .collect()
}

/// Samples CPU use between calls, from /proc/stat.
pub struct Sampler {
    last: Option<(u64, u64)>,
}

impl Sampler {
    pub fn new() -> Self {
        Sampler { last: cpu_times() }
    }

    /// (cpu percent of all cores, memory used MB, disk used MB of the state dir's filesystem)
    pub fn sample(&mut self, state_dir: &Path) -> (f64, u64, u64) {
        let now = cpu_times();
        let cpu = match (self.last, now) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                100.0 * (busy1.saturating_sub(busy0)) as f64 / (total1 - total0) as f64
            }
            _ => 0.0,
        };
        self.last = now;
        let mem = match (meminfo_kb("MemTotal"), meminfo_kb("MemAvailable")) {
            (Some(t), Some(a)) => t.saturating_sub(a) / 1024,
            _ => 0,
        };
        let disk = statvfs(state_dir).map(|(t, a)| t.saturating_sub(a) / (1024 * 1024)).unwrap_or(0);
        (cpu, mem, disk)
    }
}

/// (busy jiffies, total jiffies) over all CPUs.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_host() {
        let c = capabilities(Path::new("."), None);
        assert!(!c.hostname.is_empty());
        assert!(c.cpu_count >= 1);
        assert!(c.memory_mb > 0);
        assert!(c.disk_mb > 0);
        let mut s = Sampler::new();
        let (cpu, mem, disk) = s.sample(Path::new("."));
        assert!((0.0..=100.0).contains(&cpu));
        assert!(mem > 0 && mem <= c.memory_mb);
        assert!(disk <= c.disk_mb);
    }
}
