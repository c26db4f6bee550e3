//! Jobs, allocations, job output and workloads.

use tether_types::*;

use super::*;

pub(super) fn job(p: &ProjectId, n: u8, max_attempts: u32) -> Job {
    Job {
        id: id(JobId::from_random, n),
        project_id: p.clone(),
        spec: JobSpec {
            exec: ExecSpec { command: "/bin/true".into(), ..Default::default() },
            resources: Resources { cpu_millis: 100, memory_mb: 10, gpus: 0 },
            constraints: Constraints::default(),
            max_attempts,
            priority: i32::from(n),
        },
        labels: Labels::new(),
        status: JobStatus::Pending,
        attempt: 0,
        node_id: None,
        exit_code: None,
        error: String::new(),
        created_at: 1_000 + i64::from(n),
        updated_at: 1_000,
    }
}

pub(super) fn attempt(j: &Job, node: &NodeId, attempt: u32) -> Allocation {
    Allocation {
        key: AllocKey::Attempt(j.id.clone(), attempt),
        project_id: j.project_id.clone(),
        kind: AllocKind::Job,
        job_id: Some(j.id.clone()),
        attempt,
        workload_id: None,
        spec_version: 0,
        node_id: node.clone(),
        status: AllocStatus::Scheduled,
        resources: j.spec.resources,
        exit_code: None,
        error: String::new(),
        restarts: 0,
        scheduled_at: 2_000,
        started_at: None,
        finished_at: None,
    }
}

pub(super) async fn node_for(store: &Store, p: &ProjectId, n: u8) -> NodeId {
    let jt = join_token(store, p, 100 + n, 0, i64::MAX / 2).await;
    store.node_enroll(&enroll(p, &jt, n, 2_000)).await.unwrap().value.id
}

pub(super) async fn job_lifecycle_retries_and_idempotency(store: Store) {
    let p = project(&store).await;
    let node = node_for(&store, &p, 1).await;
    let j = job(&p, 1, 2);
    let (first, created) = store.job_submit(&j, Some("key-1")).await.unwrap().value;
    assert!(created);
    let (again, created) = store.job_submit(&job(&p, 2, 1), Some("key-1")).await.unwrap().value;
    assert!(!created);
    assert_eq!(again.id, first.id, "a retried submit returns the first job");
    assert_eq!(store.jobs_pending(10).await.unwrap().items.len(), 1);

    let placed = store.allocations_place(&[attempt(&j, &node, 1)], 2_000).await.unwrap().value;
    assert_eq!(placed.len(), 1);
    // Placing the same attempt again is refused (the job is no longer pending).
    assert!(store.allocations_place(&[attempt(&j, &node, 1)], 2_000).await.unwrap().value.is_empty());
    assert_eq!(store.job_get(&j.id).await.unwrap().unwrap().status, JobStatus::Scheduled);
    let key = AllocKey::Attempt(j.id.clone(), 1);
    // Only the holding node may report.
    assert!(store.allocation_started(&key, &id(NodeId::from_random, 9), 0, 2_100).await.unwrap().value.is_none());
    store.allocation_started(&key, &node, 0, 2_100).await.unwrap().value.unwrap();
    assert_eq!(store.job_get(&j.id).await.unwrap().unwrap().status, JobStatus::Running);
    // A failure with attempts left: back to pending for attempt 2.
    let f = store.allocation_finished(&key, &node, 3, "", 2_200).await.unwrap().value.unwrap();
    assert_eq!(f.allocation.status, AllocStatus::Failed);
    assert_eq!(f.job.as_ref().unwrap().status, JobStatus::Pending);
    assert!(store.allocation_finished(&key, &node, 3, "", 2_300).await.unwrap().value.is_none(), "idempotent");
    let _ = store.allocations_place(&[attempt(&j, &node, 2)], 2_400).await.unwrap();
    let key2 = AllocKey::Attempt(j.id.clone(), 2);
    let f = store.allocation_finished(&key2, &node, 0, "", 2_500).await.unwrap().value.unwrap();
    assert_eq!(f.job.unwrap().status, JobStatus::Succeeded);
    let attempts = store.job_allocations(&j.id).await.unwrap();
    assert_eq!(attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [AllocStatus::Failed, AllocStatus::Succeeded]);
    assert!(store.allocations_active().await.unwrap().is_empty());
    let kinds: Vec<String> =
        store.events_for_subject(&p, j.id.as_str(), 0, 100).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        ["job.submitted", "job.scheduled", "job.running", "job.retrying", "job.scheduled", "job.succeeded"]
    );
    let page = store.job_list(&p, Some(JobStatus::Succeeded), None, None, 10).await.unwrap();
    assert_eq!(page.jobs.len(), 1);
    // The node's outcomes, for its reliability score: one failed of two
    // finished, both since 2_200; only the success since 2_300.
    assert_eq!(store.node_job_outcomes(2_200).await.unwrap(), vec![(node.clone(), 2, 1)]);
    assert_eq!(store.node_job_outcomes(2_300).await.unwrap(), vec![(node.clone(), 1, 0)]);
    assert!(store.node_job_outcomes(2_600).await.unwrap().is_empty());
    // Metering's rows: the first attempt started at 2_100 and finished at
    // 2_200; the second never reported a start.
    let (held, _, _) = store.usage_rows(&p, 0, 10_000).await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!((held[0].started_at, held[0].finished_at), (Some(2_100), Some(2_200)));
    assert!(store.usage_rows(&p, 2_200, 10_000).await.unwrap().0.is_empty(), "it ended as the window began");
}

pub(super) async fn job_cancel_and_lost_on_down_node(store: Store) {
    let p = project(&store).await;
    let node = node_for(&store, &p, 1).await;
    let a = job(&p, 1, 1);
    let b = job(&p, 2, 2);
    let _ = store.job_submit(&a, None).await.unwrap();
    let _ = store.job_submit(&b, None).await.unwrap();
    let _ = store.allocations_place(&[attempt(&a, &node, 1), attempt(&b, &node, 1)], 2_000).await.unwrap();
    let (cancelled, stopping) = store.job_cancel(&p, &a.id, 2_100).await.unwrap().value;
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert_eq!(stopping.unwrap().status, AllocStatus::Stopping);
    let err = store.job_cancel(&p, &a.id, 2_200).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::FailedPrecondition);
    let err = store.job_cancel(&id(ProjectId::from_random, 9), &b.id, 2_200).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::NotFound);
    // The node goes down: b's attempt is lost and b is retried; a's stopping
    // attempt counts as stopped.
    store
        .node_status_apply(&[StatusChange {
            id: node.clone(),
            status: NodeStatus::Down,
            at: 3_000,
            last_seen_at: 2_000,
        }])
        .await
        .unwrap();
    let lost = store.allocations_lose_on_down_nodes(3_000).await.unwrap().value;
    assert_eq!(lost.len(), 2);
    assert!(store.allocations_lose_on_down_nodes(3_100).await.unwrap().value.is_empty(), "idempotent");
    let b_after = store.job_get(&b.id).await.unwrap().unwrap();
    assert_eq!((b_after.status, b_after.attempt), (JobStatus::Pending, 1));
    assert_eq!(store.job_get(&a.id).await.unwrap().unwrap().status, JobStatus::Cancelled);
    let statuses: Vec<_> = store.job_allocations(&b.id).await.unwrap().iter().map(|x| x.status).collect();
    assert_eq!(statuses, [AllocStatus::Lost]);
}

pub(super) async fn job_logs_append_and_read(store: Store) {
    let p = project(&store).await;
    let j = job(&p, 1, 1);
    let _ = store.job_submit(&j, None).await.unwrap();
    assert!(store.job_log_append(&j.id, 1, 0, b"hello ", false).await.unwrap());
    assert!(store.job_log_append(&j.id, 1, 6, b"world", true).await.unwrap());
    assert!(!store.job_log_append(&j.id, 1, 6, b"world", true).await.unwrap(), "a resend is a no-op");
    assert!(store.job_log_append(&j.id, 2, 0, b"second", false).await.unwrap(), "attempts have their own output");
    let chunks = store.job_logs(&j.id, 1, 0, 1 << 20).await.unwrap();
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
    assert_eq!(all, b"hello world");
    assert_eq!(chunks.iter().map(|c| c.truncated).collect::<Vec<_>>(), [false, true]);
    let chunks = store.job_logs(&j.id, 1, 8, 1 << 20).await.unwrap();
    assert_eq!(chunks.len(), 1);
    assert_eq!((chunks[0].pos, chunks[0].data.as_slice()), (8, &b"rld"[..]));
}

pub(super) async fn workloads_and_desired_state(store: Store) {
    let p = project(&store).await;
    let node = node_for(&store, &p, 1).await;
    let spec = WorkloadSpec {
        exec: ExecSpec { command: "/bin/sleep".into(), args: vec!["100".into()], ..Default::default() },
        resources: Resources::default(),
        constraints: Constraints::default(),
        restart: RestartPolicy::Always,
        max_parallel: 1,
    };
    let w = Workload {
        id: id(WorkloadId::from_random, 1),
        project_id: p.clone(),
        name: "web".into(),
        spec: spec.clone(),
        spec_version: 1,
        replicas: 2,
        created_at: 1_000,
        updated_at: 1_000,
    };
    let _ = store.workload_create(&w).await.unwrap();
    let dup = Workload { id: id(WorkloadId::from_random, 2), ..w.clone() };
    assert_eq!(Error::from(store.workload_create(&dup).await.unwrap_err()).code, ErrorCode::AlreadyExists);
    let scaled = store.workload_scale(&p, &w.id, 3, 2_000).await.unwrap().value;
    assert_eq!(scaled.replicas, 3);
    let mut spec2 = spec.clone();
    spec2.exec.args = vec!["200".into()];
    assert_eq!(store.workload_update_spec(&p, &w.id, &spec2, 2_100).await.unwrap().value.spec_version, 2);
    assert_eq!(
        store.workload_update_spec(&p, &w.id, &spec2, 2_200).await.unwrap().value.spec_version,
        2,
        "no change, no bump"
    );
    let replica = Allocation {
        key: AllocKey::Replica(AllocId::from_random([7; 10])),
        kind: AllocKind::Service,
        job_id: None,
        attempt: 1,
        workload_id: Some(w.id.clone()),
        spec_version: 2,
        ..attempt(&job(&p, 1, 1), &node, 1)
    };
    assert_eq!(store.allocations_place(std::slice::from_ref(&replica), 2_300).await.unwrap().value.len(), 1);
    assert_eq!(store.workload_allocations(&w.id).await.unwrap().len(), 1);
    let (_, stopping) = store.workload_delete(&p, &w.id, 2_400).await.unwrap().value;
    assert_eq!(stopping.len(), 1);
    assert_eq!(stopping[0].status, AllocStatus::Stopping);
    assert!(store.workload_get(&p, &w.id).await.unwrap().is_none());
    let f = store.allocation_finished(&replica.key, &node, -9, "stopped", 2_500).await.unwrap().value.unwrap();
    assert_eq!(f.allocation.status, AllocStatus::Stopped);

    // Desired state: version bumps, stale acks ignored, NACK kept.
    let n = store
        .node_set_desired(&node, DesiredNodeState::Draining, "maintenance", Some(9_000), 3_000)
        .await
        .unwrap()
        .value;
    assert_eq!(
        (n.desired_state, n.desired_state_version, n.drain_deadline),
        (DesiredNodeState::Draining, 2, Some(9_000))
    );
    assert!(store.node_desired_ack(&node, 1, true, "", 3_100).await.unwrap().value.is_none(), "stale ack");
    let n = store.node_desired_ack(&node, 2, false, "cannot", 3_200).await.unwrap().value.unwrap();
    assert_eq!((n.acked_desired_state_version, n.desired_state_nack.as_str()), (0, "cannot"));
    let n = store.node_desired_ack(&node, 2, true, "", 3_300).await.unwrap().value.unwrap();
    assert_eq!((n.acked_desired_state_version, n.desired_state_nack.as_str()), (2, ""));
}

/// A write answers the highest event sequence number its transaction
/// appended (what the control plane tells watchers), and none when it
/// appended no event.
pub(super) async fn writes_answer_their_last_event_sequence(store: Store) {
    let p = project(&store).await;
    let node = node_for(&store, &p, 1).await;
    let (a, b) = (job(&p, 1, 1), job(&p, 2, 1));
    let submitted = store.jobs_submit(&[(&a, None, None), (&b, None, None)]).await.unwrap();
    let head = store.events_head().await.unwrap();
    assert_eq!(submitted.seq, Some(head), "two submissions, two events: the later one's sequence");
    let subjects: Vec<String> =
        events_since(&store, &p, "job.", head - 2, 10).await.unwrap().into_iter().map(|e| e.subject).collect();
    assert_eq!(subjects, [a.id.to_string(), b.id.to_string()]);

    let placed = store.allocations_place(&[attempt(&a, &node, 1)], 2_000).await.unwrap();
    assert_eq!(placed.seq, Some(store.events_head().await.unwrap()));
    assert!(placed.seq > submitted.seq);

    // Nothing to write, no event, no sequence.
    let again = store.allocations_place(&[attempt(&a, &node, 1)], 2_000).await.unwrap();
    assert!(again.value.is_empty());
    assert_eq!(again.seq, None);
    let none = store.allocations_stop(&[], "nothing", 2_100).await.unwrap();
    assert_eq!(none.seq, None);

    let w = Workload {
        id: id(WorkloadId::from_random, 3),
        project_id: p.clone(),
        name: "web".into(),
        spec: WorkloadSpec {
            exec: ExecSpec { command: "/bin/sleep".into(), ..Default::default() },
            resources: Resources { cpu_millis: 100, memory_mb: 10, gpus: 0 },
            constraints: Constraints::default(),
            restart: RestartPolicy::Always,
            max_parallel: 1,
        },
        spec_version: 1,
        replicas: 2,
        created_at: 3_000,
        updated_at: 3_000,
    };
    assert!(store.workload_create(&w).await.unwrap().seq.is_some());
    let unchanged = store.workload_scale(&p, &w.id, 2, 3_100).await.unwrap();
    assert_eq!(unchanged.seq, None, "scaling to the same count changes nothing");
    let scaled = store.workload_scale(&p, &w.id, 3, 3_200).await.unwrap();
    assert_eq!(scaled.seq, Some(store.events_head().await.unwrap()));
}

pub(super) async fn usage_ingest_counts_each_key_once(store: Store) {
    let p = project(&store).await;
    let rec = |key: &str, q: u64, at: i64| UsageIngest {
        metric: "egress_bytes".into(),
        quantity: q,
        used_at: at,
        idempotency_key: key.into(),
    };
    let c = store.usage_ingest(&org(), &p, &[rec("a", 10, 1_000), rec("b", 5, 2_000)], 3_000).await.unwrap();
    assert_eq!(c.value, (2, 0));
    assert!(c.seq.is_some(), "an event");
    // The same keys again (even with other figures): nothing counts.
    let c = store.usage_ingest(&org(), &p, &[rec("a", 99, 1_000), rec("c", 1, 9_000)], 4_000).await.unwrap();
    assert_eq!(c.value, (1, 1));
    let c = store.usage_ingest(&org(), &p, &[rec("c", 1, 9_000)], 5_000).await.unwrap();
    assert_eq!((c.value, c.seq), ((0, 1), None), "all duplicates: no event");
    // Only records used in [start, end) count.
    let (_, _, ingested) = store.usage_rows(&p, 0, 2_000).await.unwrap();
    assert_eq!(ingested, vec![("egress_bytes".to_string(), 10)]);
    let (_, _, ingested) = store.usage_rows(&p, 0, 10_000).await.unwrap();
    assert_eq!(ingested.iter().map(|(_, q)| q).sum::<u64>(), 16);
    let ev = events_since(&store, &p, "usage.", 0, 10).await.unwrap();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].payload["accepted"], 2);
}
