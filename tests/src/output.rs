//! Job output end to end: the per-attempt cap and its mark, reading from an
//! offset, timeouts, and a job that floods output as fast as it can.

use std::time::Duration;

use tether_proto::pb::{self, JobStatus};

use crate::harness::*;
use crate::work::{get_job, job};

both_backends!(timeouts_and_the_output_cap, a_job_flooding_output_finishes_promptly);

async fn timeouts_and_the_output_cap(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let agent = Agent::start(&cp, "t1", &[]);
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut client = cp.jobs().await;
    let mut req = job("head -c 3000000 /dev/zero | tr '\\0' x; sleep 60", 1);
    req.spec.as_mut().unwrap().exec.as_mut().unwrap().timeout = Some(prost_types::Duration { seconds: 2, nanos: 0 });
    let j = client.submit_job(req).await.unwrap().into_inner().job.unwrap();
    let done = eventually(Duration::from_secs(30), "timed-out job to fail", || async {
        let j = get_job(&client, &j.job_id).await;
        (j.status == JobStatus::Failed as i32).then_some(j)
    })
    .await;
    assert!(done.error.contains("timed out"), "{done:?}");
    let mut logs = client
        .stream_job_logs(pb::StreamJobLogsRequest { job_id: j.job_id.clone(), offset: 0, follow: false })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    let mut truncated = false;
    let mut expect_offset = 0u64;
    while let Some(c) = logs.message().await.unwrap() {
        assert_eq!(c.offset, expect_offset, "chunks are contiguous");
        expect_offset += c.data.len() as u64;
        truncated |= c.truncated;
        out.extend(c.data);
    }
    let mark = b"\n[tether: output truncated at 1048576 bytes]\n";
    assert!(truncated, "the cut is flagged");
    assert_eq!(out.len(), 1024 * 1024 + mark.len());
    assert!(out.ends_with(mark));
    assert!(out[..1024 * 1024].iter().all(|b| *b == b'x'));
    // Reading from an offset returns the rest only.
    let mut tail = client
        .stream_job_logs(pb::StreamJobLogsRequest { job_id: j.job_id.clone(), offset: 1024 * 1024, follow: false })
        .await
        .unwrap()
        .into_inner();
    let mut rest = Vec::new();
    while let Some(c) = tail.message().await.unwrap() {
        rest.extend(c.data);
    }
    assert_eq!(rest, mark);
    drop(agent);
}

/// 50 MB written as fast as the job can, then exit 0: the finish report
/// is not stuck behind (or dropped for) the output, so the job is
/// `succeeded` within a few seconds of its exit, its log cut at the cap and
/// marked.
async fn a_job_flooding_output_finishes_promptly(backend: Backend) {
    let cp = ControlPlane::start(backend).await;
    let agent = Agent::start(&cp, "flood", &[]);
    cp.wait_nodes(1, pb::NodeStatus::Ready, Duration::from_secs(20)).await;
    let mut client = cp.jobs().await;
    let stamp = cp.dir.path().join("exited-at");
    let script = format!("head -c 50000000 /dev/zero | tr '\\0' x; date +%s%N > {}; exit 0", stamp.display());
    let j = client.submit_job(job(&script, 1)).await.unwrap().into_inner().job.unwrap();
    let done = eventually(Duration::from_secs(60), "the flooding job to succeed", || async {
        let j = get_job(&client, &j.job_id).await;
        (j.status != JobStatus::Pending as i32
            && j.status != JobStatus::Scheduled as i32
            && j.status != JobStatus::Running as i32)
            .then_some(j)
    })
    .await;
    assert_eq!(done.status, JobStatus::Succeeded as i32, "{done:?}");
    let exited_ns: i128 = std::fs::read_to_string(&stamp).unwrap().trim().parse().unwrap();
    let finished = done.attempts.last().and_then(|a| a.finished_at).expect("finish time");
    let finished_ns = i128::from(finished.seconds) * 1_000_000_000 + i128::from(finished.nanos);
    let lag = Duration::from_nanos((finished_ns - exited_ns).max(0) as u64);
    assert!(lag < Duration::from_secs(10), "recorded {lag:?} after the job exited");

    let mut logs = client
        .stream_job_logs(pb::StreamJobLogsRequest { job_id: j.job_id.clone(), offset: 0, follow: false })
        .await
        .unwrap()
        .into_inner();
    let (mut len, mut truncated, mut tail) = (0usize, false, Vec::new());
    while let Some(c) = logs.message().await.unwrap() {
        len += c.data.len();
        truncated |= c.truncated;
        tail = c.data;
    }
    let mark = b"\n[tether: output truncated at 1048576 bytes]\n";
    assert!(truncated, "the cut is flagged");
    assert_eq!(len, 1024 * 1024 + mark.len());
    assert!(tail.ends_with(mark));
    drop(agent);
}
