//! Faults as part of the contract, made for real: a network partition inside
//! network namespaces this test creates (iptables drops), healed before and
//! after HTTP/2 keepalive ends the session; a slow link (a relay that holds
//! every chunk); PostgreSQL stopped under running jobs; the SQLite data dir
//! on a tmpfs that fills up. Each asserts: nothing acknowledged is lost,
//! nothing runs twice or past its loss for one attempt, every job ends in a
//! terminal state without operator action.
//!
//! Needs root (namespaces, iptables, mount), as `./scripts/test` runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tether_proto::pb::{self, JobStatus, NodeStatus};
use tonic::Code;

use crate::harness::*;

both_backends!(partition_healed_before_keepalive_runs_no_attempt_past_its_loss, slow_link_does_not_flap_a_new_node);

mod sqlite_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partition_healed_after_keepalive_resyncs_on_reconnect() {
        partition(Backend::Sqlite, Duration::from_secs(24)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopped_agent_gives_its_attempts_up_when_it_resumes() {
        stopped_agent().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_disk_loses_no_acknowledged_write() {
        full_disk().await;
    }
}

mod postgres_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_stopped_under_running_jobs() {
        database_outage().await;
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

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

fn job_req(script: &str, max_attempts: u32, selector: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec: Some(pb::JobSpec {
            driver: "exec".into(),
            exec: Some(pb::ExecSpec {
                command: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                ..Default::default()
            }),
            resources: Some(pb::Resources { cpu_millis: 10, memory_mb: 1, gpus: 0 }),
            constraints: Some(pb::Constraints { label_selector: selector.into(), ..Default::default() }),
            max_attempts,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A job script that records its start in `dir/ran`, proves it is alive
/// every 200 ms in `dir/alive-JOB-ATTEMPT` (Unix ms), and marks its end.
fn marking_script(dir: &Path, ticks: u32) -> String {
    let d = dir.display();
    format!(
        "id=$TETHER_JOB_ID-$TETHER_JOB_ATTEMPT; echo \"$TETHER_JOB_ID $TETHER_JOB_ATTEMPT\" >> {d}/ran; i=0; \
         while [ $i -lt {ticks} ]; do date +%s%3N > {d}/alive-$id.tmp && mv {d}/alive-$id.tmp {d}/alive-$id; \
         sleep 0.2; i=$((i+1)); done; touch {d}/done-$id"
    )
}

/// How often each (job, attempt) started, from `dir/ran`.
fn starts(dir: &Path) -> HashMap<(String, u32), u32> {
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(dir.join("ran")).unwrap_or_default().lines() {
        let mut it = line.split_whitespace();
        if let (Some(j), Some(a)) = (it.next(), it.next()) {
            *out.entry((j.to_owned(), a.parse().unwrap())).or_insert(0) += 1;
        }
    }
    out
}

/// Submits `n` jobs running `script` (one attempt each); returns their ids.
async fn submit(cp: &ControlPlane, script: &str, n: usize) -> Vec<String> {
    let mut jobs = cp.jobs().await;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(jobs.submit_job(job_req(script, 1, "")).await.unwrap().into_inner().job.unwrap().job_id);
    }
    ids
}

/// No (job, attempt) started twice.
fn each_started_once(dir: &Path) {
    for (k, n) in starts(dir) {
        assert_eq!(n, 1, "{k:?} started {n} times");
    }
}

/// Waits until every job in `ids` succeeded; returns them.
async fn all_succeeded(cp: &ControlPlane, ids: &[String]) -> Vec<pb::Job> {
    eventually(Duration::from_secs(40), "every job succeeded", || async {
        let mut out = Vec::new();
        for id in ids {
            let j = get_job(cp, id).await;
            if j.status != JobStatus::Succeeded as i32 {
                return None;
            }
            out.push(j);
        }
        Some(out)
    })
    .await
}

fn last_alive(dir: &Path, job: &str, attempt: u32) -> Option<i64> {
    std::fs::read_to_string(dir.join(format!("alive-{job}-{attempt}"))).ok()?.trim().parse().ok()
}

fn ms(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap_or(0)
}

async fn get_job(cp: &ControlPlane, id: &str) -> pb::Job {
    cp.jobs().await.get_job(pb::GetJobRequest { job_id: id.into() }).await.unwrap().into_inner().job.unwrap()
}

async fn node_status(cp: &ControlPlane, id: &str) -> Option<i32> {
    cp.list_nodes().await.into_iter().find(|n| n.node_id == id).map(|n| n.status)
}

async fn partition_healed_before_keepalive_runs_no_attempt_past_its_loss(backend: Backend) {
    // Healed after 8 s: the agent's HTTP/2 keepalive (15 s + 5 s) has not
    // noticed, so the same TCP connection comes back.
    partition(backend, Duration::from_secs(8)).await;
}

/// One node (`a`, in a namespace) runs three jobs; it is cut off for
/// `outage`; the control plane declares it down and retries the jobs on node
/// `b`. The cut-off node must have given each attempt up before it was
/// declared lost, and must come back, resynchronised, when the link heals.
async fn partition(backend: Backend, outage: Duration) {
    let net = Netns::new();
    let opts = Options {
        interval: Duration::from_millis(500),
        jitter: Duration::from_millis(100),
        grace: Duration::from_millis(1500),
        down_after: Duration::from_secs(4),
        grpc_addr: format!("{}:0", net.host_ip),
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
async fn stopped_agent() {
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
async fn slow_link_does_not_flap_a_new_node(backend: Backend) {
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

/// A throwaway PostgreSQL cluster of this test's own, so that stopping it
/// troubles no other test.
struct OwnPostgres {
    dir: tempfile::TempDir,
    url: String,
}

fn pg_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("scripts/postgres-throwaway")
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = Command::new(pg_script()).arg("start").arg(dir.path().join("pg")).output().unwrap();
        assert!(out.status.success(), "postgres-throwaway start: {}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        OwnPostgres { dir, url }
    }

    fn ctl(&self, cmd: &str) {
        run(Command::new(pg_script()).arg(cmd).arg(self.dir.path().join("pg")));
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new(pg_script()).arg("stop").arg(self.dir.path().join("pg")).output();
    }
}

async fn timed_get(cp: &ControlPlane, path: &str) -> (u16, String, Duration) {
    let t = Instant::now();
    let (code, body) = cp.http_get(path).await;
    (code, body, t.elapsed())
}

/// PostgreSQL stops for 6 s while jobs run and finish: the control plane
/// reports it honestly and fast, keeps every session, stores every result
/// once the database is back, and loses or repeats nothing.
async fn database_outage() {
    let pg = OwnPostgres::start();
    let opts = Options { down_after: Duration::from_secs(4), database_url: Some(pg.url.clone()), ..Options::default() };
    let cp = ControlPlane::start_opts(Backend::Postgres, opts).await;
    let marks = cp.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let agents = [Agent::start(&cp, "p1", &[]), Agent::start(&cp, "p2", &[])];
    cp.wait_nodes(2, NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut jobs = cp.jobs().await;
    // 15 ticks: about 3 s each, so they end while the database is away.
    let ids = submit(&cp, &marking_script(&marks, 15), 8).await;
    eventually(Duration::from_secs(20), "all eight running", || async {
        (starts(&marks).len() == ids.len()).then_some(())
    })
    .await;

    pg.ctl("down");
    let stopped = Instant::now();
    let (code, body, took) = eventually(Duration::from_secs(5), "/readyz to say so", || async {
        let r = timed_get(&cp, "/readyz").await;
        (r.0 == 503).then_some(r)
    })
    .await;
    assert!(body.contains("database unavailable"), "{body}");
    // A cached answer: milliseconds; the bound leaves room for a loaded CI machine.
    assert!(took < Duration::from_secs(2), "/readyz took {took:?}");
    eprintln!("/readyz during the outage answered in {took:?}");
    assert_eq!(code, 503);
    let t = Instant::now();
    let err = jobs.submit_job(job_req("true", 1, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("database unavailable"), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(6), "a submit during the outage took {:?}", t.elapsed());
    // Health probes answer while the database is away.
    assert_eq!(cp.http_get("/healthz").await.0, 200);
    // Every job ends while the database is away: its result has to wait.
    eventually(Duration::from_secs(15), "all eight finished during the outage", || async {
        ids.iter().all(|id| marks.join(format!("done-{id}-1")).exists()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(stopped.elapsed())).await;
    assert_eq!(cp.http_get("/readyz").await.0, 503, "still down when it comes back up");
    pg.ctl("up");

    eventually(Duration::from_secs(20), "/readyz ready again", || async {
        (cp.http_get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    // Every job ends by itself, once, on its first attempt: the sessions
    // outlived the outage and the results were stored when it ended.
    let done = all_succeeded(&cp, &ids).await;
    for j in &done {
        assert_eq!(j.attempts.len(), 1, "{j:?}");
    }
    each_started_once(&marks);
    for n in cp.list_nodes().await {
        assert_eq!(n.status, NodeStatus::Ready as i32, "{n:?}");
    }
    // And new work flows again.
    let j = jobs.submit_job(job_req("true", 1, "")).await.unwrap().into_inner().job.unwrap();
    eventually(Duration::from_secs(20), "a job after the outage", || async {
        (get_job(&cp, &j.job_id).await.status == JobStatus::Succeeded as i32).then_some(())
    })
    .await;
    let log = cp.log();
    assert!(log.contains("database unavailable"), "the control plane said what happened");
    // The sessions outlived the outage: results waited at the control plane.
    for a in &agents {
        let log = a.log();
        assert!(!log.contains("session ended"), "agent {} lost its session:\n{log}", a.name);
    }
    // No node was counted silent for the control plane's own outage.
    assert!(!log.contains("\"unreachable\"") && !log.contains("\"down\""), "a node changed status:\n{log}");
    drop(agents);
}

/// A tmpfs mounted by the test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path()));
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).output();
    }
}

/// Writes zeros into `path` until the filesystem is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // Smaller pieces into the last gap.
    while f.write_all(&[0u8; 512]).and_then(|_| f.sync_data()).is_ok() {}
}

/// The SQLite data dir on a 4 MiB tmpfs that fills up while jobs run and
/// are submitted: every write either fails with a clear error or is durable;
/// after space is freed and the control plane restarted, every acknowledged
/// job is there and every job ends by itself.
async fn full_disk() {
    let fs = Tmpfs::mount("4m");
    let opts = Options { data_dir: Some(fs.path().join("data")), ..Options::default() };
    let mut cp = ControlPlane::start_opts(Backend::Sqlite, opts).await;
    let marks = cp.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let agent = Agent::start(&cp, "d1", &[]);
    cp.wait_nodes(1, NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut jobs = cp.jobs().await;
    // Four jobs that end while the disk is full.
    let mut acked = submit(&cp, &marking_script(&marks, 10), 4).await;
    eventually(Duration::from_secs(20), "four running", || async { (starts(&marks).len() == 4).then_some(()) }).await;

    fill(&fs.path().join("filler"));
    // Submit until the database refuses (a WAL with room left takes a few).
    let mut refused = 0;
    for i in 0..400 {
        match jobs.submit_job(job_req(&marking_script(&marks, 1), 1, "")).await {
            Ok(r) => acked.push(r.into_inner().job.unwrap().job_id),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "submit {i}: {e:?}");
                assert!(e.message().contains("storage is full"), "{e:?}");
                refused += 1;
                if refused == 10 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused, 10, "the full disk was never noticed");
    let (code, body) = eventually(Duration::from_secs(5), "/readyz to say the disk is full", || async {
        let r = cp.http_get("/readyz").await;
        (r.0 == 503).then_some(r)
    })
    .await;
    assert_eq!(code, 503);
    assert!(body.contains("storage is full"), "{body}");
    // REST says 507, with the error as JSON.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/jobs", cp.http_addr))
        .bearer_auth(&cp.admin_token)
        .json(&serde_json::json!({"spec": {"driver": "exec", "exec": {"command": "/bin/true"}}}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    if status == 200 {
        acked.push(body["job"]["jobId"].as_str().unwrap().to_owned());
    } else {
        assert_eq!(status, 507, "{body}");
        assert_eq!(body["code"], "insufficient_storage", "{body}");
    }
    // The four jobs end meanwhile; their results wait at the control plane.
    tokio::time::sleep(Duration::from_secs(3)).await;

    std::fs::remove_file(fs.path().join("filler")).unwrap();
    eventually(Duration::from_secs(10), "/readyz ready once space is back", || async {
        (cp.http_get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    for _ in 0..3 {
        acked.push(jobs.submit_job(job_req("true", 1, "")).await.unwrap().into_inner().job.unwrap().job_id);
    }
    // A hard restart: what was acknowledged was on disk.
    cp.stop(libc::SIGKILL).await;
    cp.restart().await;
    let mut client = cp.jobs().await;
    for id in &acked {
        if let Err(e) = client.get_job(pb::GetJobRequest { job_id: id.clone() }).await {
            panic!("acknowledged job {id} is gone after the restart: {e:?}");
        }
    }
    let done = eventually(Duration::from_secs(60), "every acknowledged job succeeded", || async {
        let mut client = cp.jobs().await;
        let mut out = Vec::new();
        for id in &acked {
            let j = client.get_job(pb::GetJobRequest { job_id: id.clone() }).await.ok()?.into_inner().job?;
            if j.status != JobStatus::Succeeded as i32 {
                return None;
            }
            out.push(j);
        }
        Some(out)
    })
    .await;
    for j in &done {
        assert_eq!(j.attempts.len(), 1, "{j:?}");
    }
    each_started_once(&marks);
    eprintln!("full disk: {} writes acknowledged and kept, {refused} refused", acked.len());
    drop(agent);
}
