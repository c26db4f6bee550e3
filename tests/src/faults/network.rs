//! Faults of the network and of processes: partitions, slow links, a
//! frozen agent.

use std::process::Command;
use std::time::{Duration, Instant};

use tether_proto::pb::{self, JobStatus, NodeStatus};

use super::*;

/// A network namespace with a veth pair to this one: the host side gets
/// `host_ip`, the namespace side `.2` of the same /30. Removed on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    fn new() -> Netns {
        let pid = std::process::id();
        let idx = pid % 16384;
        let (c, d) = (idx / 64, (idx % 64) * 4);
        let ns =
            Netns { name: format!("tt{pid}"), host_if: format!("tt{pid}h"), host_ip: format!("10.213.{c}.{}", d + 1) };
        let peer = format!("tt{pid}n");
        let ns_ip = format!("10.213.{c}.{}", d + 2);
        // Leftovers of an earlier run with the same pid.
        let _ = Command::new("ip").args(["link", "del", &ns.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        run(Command::new("ip").args(["netns", "add", &ns.name]));
        run(Command::new("ip").args(["link", "add", &ns.host_if, "type", "veth", "peer", "name", &peer]));
        run(Command::new("ip").args(["link", "set", &peer, "netns", &ns.name]));
        run(Command::new("ip").args(["addr", "add", &format!("{}/30", ns.host_ip), "dev", &ns.host_if]));
        run(Command::new("ip").args(["link", "set", &ns.host_if, "up"]));
        ns.exec(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &peer]);
        ns.exec(&["ip", "link", "set", &peer, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(args));
    }

    /// Drops every packet in and out of the namespace (TCP connections stay
    /// open, as in a real partition).
    fn partition(&self) {
        self.exec(&["iptables", "-A", "INPUT", "-j", "DROP"]);
        self.exec(&["iptables", "-A", "OUTPUT", "-j", "DROP"]);
    }

    fn heal(&self) {
        self.exec(&["iptables", "-F"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

pub(super) async fn partition_healed_before_keepalive_runs_no_attempt_past_its_loss(backend: Backend) {
    // Healed after 8 s: the agent's HTTP/2 keepalive (15 s + 5 s) has not
    // noticed, so the same TCP connection comes back.
    partition(backend, Duration::from_secs(8)).await;
}

/// One node (`a`, in a namespace) runs three jobs; it is cut off for
/// `outage`; the control plane declares it down and retries the jobs on node
/// `b`. The cut-off node must have given each attempt up before it was
/// declared lost, and must come back, resynchronised, when the link heals.
pub(super) async fn partition(backend: Backend, outage: Duration) {
    let net = Netns::new();
    let opts = Options {
        interval: Duration::from_millis(500),
        jitter: Duration::from_millis(100),
        grace: Duration::from_millis(1500),
        down_after: Duration::from_secs(4),
        grpc_addr: format!("{}:0", net.host_ip),
        // The veth address is not loopback: plaintext there needs saying so
        // (the namespace is the test's own).
        extra_args: vec!["--insecure-plaintext".into()],
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(backend, opts).await;
    let marks = cp.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let a = Agent::start_in_netns(&cp, "a", &net.name, &["--labels", "side=a"]);
    let a_id = a.node_id().await;
    cp.wait_nodes(1, NodeStatus::Ready, Duration::from_secs(20)).await;

    // 40 ticks of 200 ms: about 8 s of work per attempt.
    let script = marking_script(&marks, 40);
    let mut jobs = cp.jobs().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let j = jobs.submit_job(job_req(&script, 2, "")).await.unwrap().into_inner().job.unwrap();
        ids.push(j.job_id);
    }
    eventually(Duration::from_secs(20), "three attempts running on a", || async {
        let s = starts(&marks);
        ids.iter().all(|id| s.contains_key(&(id.clone(), 1))).then_some(())
    })
    .await;
    let b = Agent::start(&cp, "b", &["--labels", "side=b"]);
    cp.wait_nodes(2, NodeStatus::Ready, Duration::from_secs(20)).await;

    let cut = Instant::now();
    net.partition();
    eventually(Duration::from_secs(20), "a down", || async {
        (node_status(&cp, &a_id).await == Some(NodeStatus::Down as i32)).then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), "every job retried on b", || async {
        let s = starts(&marks);
        ids.iter().all(|id| s.contains_key(&(id.clone(), 2))).then_some(())
    })
    .await;
    tokio::time::sleep(outage.saturating_sub(cut.elapsed())).await;
    net.heal();
    let healed = Instant::now();

    // The node comes back by itself, on a new session that resynchronised.
    eventually(Duration::from_secs(30), "a ready again", || async {
        (node_status(&cp, &a_id).await == Some(NodeStatus::Ready as i32)).then_some(())
    })
    .await;
    eprintln!("partition {outage:?}: a ready again {:?} after the heal", healed.elapsed());
    let done = all_succeeded(&cp, &ids).await;
    for j in &done {
        assert_eq!(j.attempts.len(), 2, "{j:?}");
        let first = &j.attempts[0];
        assert_eq!(first.status, "lost", "{j:?}");
        assert_eq!(first.node_id, a_id);
        assert_eq!(j.attempts[1].status, "succeeded");
        let lost_at = ms(&first.finished_at);
        let alive = last_alive(&marks, &j.job_id, 1).expect("attempt 1 ran");
        assert!(
            alive < lost_at,
            "attempt 1 of {} was alive at {alive}, after it was declared lost at {lost_at}",
            j.job_id
        );
        assert!(!marks.join(format!("done-{}-1", j.job_id)).exists(), "attempt 1 of {} ran to its end", j.job_id);
        assert!(marks.join(format!("done-{}-2", j.job_id)).exists());
    }
    // Nothing started twice for one attempt, on either node.
    each_started_once(&marks);
    let log = a.log();
    assert!(log.contains("gave up running job attempts"), "the cut-off agent fenced itself:\n{log}");
    drop(b);
}

/// An agent frozen with SIGSTOP past the down timeout: its node goes down and
/// its job is retried elsewhere. Its processes keep running meanwhile (a
/// stopped agent cannot stop them: see docs/reliability.md); once it resumes
/// it kills the stale attempt at once, before that can finish, and comes
/// back through a resync.
pub(super) async fn stopped_agent() {
    let opts = Options {
        interval: Duration::from_millis(300),
        grace: Duration::from_millis(1000),
        down_after: Duration::from_secs(3),
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(Backend::Sqlite, opts).await;
    let marks = cp.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let frozen = Agent::start(&cp, "frozen", &[]);
    let frozen_id = frozen.node_id().await;
    cp.wait_nodes(1, NodeStatus::Ready, Duration::from_secs(20)).await;
    // 60 ticks: about 12 s, longer than the freeze.
    let j = cp.jobs().await.submit_job(job_req(&marking_script(&marks, 60), 2, "")).await.unwrap().into_inner();
    let job_id = j.job.unwrap().job_id;
    eventually(Duration::from_secs(20), "attempt 1 running", || async {
        starts(&marks).contains_key(&(job_id.clone(), 1)).then_some(())
    })
    .await;
    let other = Agent::start(&cp, "other", &[]);
    cp.wait_nodes(2, NodeStatus::Ready, Duration::from_secs(20)).await;

    frozen.signal(libc::SIGSTOP);
    eventually(Duration::from_secs(20), "attempt 2 running elsewhere", || async {
        starts(&marks).contains_key(&(job_id.clone(), 2)).then_some(())
    })
    .await;
    assert_eq!(node_status(&cp, &frozen_id).await, Some(NodeStatus::Down as i32));
    frozen.signal(libc::SIGCONT);
    let resumed = Instant::now();
    // The stale attempt dies at once: its alive mark stops moving.
    let stale_gone = eventually(Duration::from_secs(5), "attempt 1 killed", || async {
        let a = last_alive(&marks, &job_id, 1)?;
        tokio::time::sleep(Duration::from_millis(600)).await;
        (last_alive(&marks, &job_id, 1)? == a).then_some(resumed.elapsed())
    })
    .await;
    eprintln!("stale attempt stopped {stale_gone:?} after SIGCONT");
    eventually(Duration::from_secs(20), "frozen node ready again", || async {
        (node_status(&cp, &frozen_id).await == Some(NodeStatus::Ready as i32)).then_some(())
    })
    .await;
    let j = eventually(Duration::from_secs(30), "job succeeded", || async {
        let j = get_job(&cp, &job_id).await;
        (j.status == JobStatus::Succeeded as i32).then_some(j)
    })
    .await;
    assert_eq!(j.attempts.len(), 2);
    assert_eq!(j.attempts[0].status, "lost");
    assert!(!marks.join(format!("done-{job_id}-1")).exists(), "the stale attempt ran to its end");
    each_started_once(&marks);
    drop(other);
}

/// A TCP relay on 127.0.0.1 that holds every chunk for `delay` in each
/// direction, in order: a slow link.
struct SlowLink {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    async fn start(upstream: String, delay: Duration) -> SlowLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                conns.spawn(pump(dr, uw, delay));
                conns.spawn(pump(ur, dw, delay));
            }
        });
        SlowLink { addr, task }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(mut r: tokio::net::tcp::OwnedReadHalf, mut w: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Over a link with a 1 s one-way delay (grace 1.5 s, beats every 500 ms), a
/// new node is counted live from its first message and never flaps; a job
/// runs through it.
pub(super) async fn slow_link_does_not_flap_a_new_node(backend: Backend) {
    let opts = Options {
        interval: Duration::from_millis(500),
        jitter: Duration::from_millis(50),
        grace: Duration::from_millis(1500),
        down_after: Duration::from_secs(4),
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(backend, opts).await;
    let link = SlowLink::start(cp.grpc_addr.clone(), Duration::from_secs(1)).await;
    let url = format!("http://{}", link.addr);
    let a = Agent::start_via(&cp, "slow", &url, &[]);
    let id = a.node_id().await;
    let mut watch = cp.nodes().await.watch_nodes(pb::WatchNodesRequest::default()).await.unwrap().into_inner();
    let seen_ready = eventually(Duration::from_secs(30), "slow node ready", || async {
        (node_status(&cp, &id).await == Some(NodeStatus::Ready as i32)).then_some(Instant::now())
    })
    .await;
    // Run a job through the slow link while watching the node for 8 s.
    let marks = cp.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let j = cp.jobs().await.submit_job(job_req(&marking_script(&marks, 5), 1, "")).await.unwrap().into_inner();
    let job_id = j.job.unwrap().job_id;
    let mut statuses = Vec::new();
    let until = seen_ready + Duration::from_secs(8);
    while let Ok(Some(Ok(ev))) = tokio::time::timeout(until.saturating_duration_since(Instant::now()), watch.message())
        .await
        .map(|r| r.transpose())
    {
        if let Some(n) = ev.node.filter(|n| n.node_id == id) {
            statuses.push(n.status);
        }
    }
    assert!(
        statuses.iter().all(|s| *s == NodeStatus::Ready as i32 || *s == NodeStatus::Pending as i32),
        "the slow node flapped: {statuses:?}\n{}",
        a.log()
    );
    let j = eventually(Duration::from_secs(30), "job done over the slow link", || async {
        let j = get_job(&cp, &job_id).await;
        (j.status == JobStatus::Succeeded as i32).then_some(j)
    })
    .await;
    assert_eq!(j.attempts.len(), 1);
    assert_eq!(node_status(&cp, &id).await, Some(NodeStatus::Ready as i32));
}
