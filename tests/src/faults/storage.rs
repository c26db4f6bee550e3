//! Faults of storage: the database stopped, the disk full.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tether_proto::pb::{self, JobStatus, NodeStatus};
use tonic::Code;

use super::*;

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
pub(super) async fn database_outage() {
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
pub(super) async fn full_disk() {
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
    let resp = crate::harness::http_client()
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
