//! The registry side of the store: bootstrap, settings, enrolment, sessions, status, listing, tokens, leases.

use tether_types::*;

use super::*;

pub(super) async fn bootstrap_is_idempotent(store: Store) {
    let first = store.bootstrap(id(OrgId::from_random, 1), id(ProjectId::from_random, 2), 1).await.unwrap();
    assert!(first.created);
    let again = store.bootstrap(id(OrgId::from_random, 3), id(ProjectId::from_random, 4), 2).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.project_id, first.project_id);
    assert_eq!(again.org_id, first.org_id);
    assert_eq!(store.project_org(&first.project_id).await.unwrap(), Some(first.org_id));
    let events = events_since(&store, &first.project_id, "project.", 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
}

pub(super) async fn settings_first_writer_wins(store: Store) {
    assert_eq!(store.setting_get("k").await.unwrap(), None);
    assert_eq!(store.setting_put_if_absent("k", b"one").await.unwrap(), b"one");
    assert_eq!(store.setting_put_if_absent("k", b"two").await.unwrap(), b"one");
    assert_eq!(store.setting_get("k").await.unwrap().as_deref(), Some(&b"one"[..]));
}

pub(super) async fn enroll_spends_join_token_uses(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 2, 10_000).await;
    let _ = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap();
    let _ = store.node_enroll(&enroll(&p, &jt, 2, 2_000)).await.unwrap();
    let err = store.node_enroll(&enroll(&p, &jt, 3, 2_000)).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Unauthenticated);
    assert_eq!(store.node_get(&id(NodeId::from_random, 3)).await.unwrap(), None, "nothing stored");
    let (t, hash) = store.join_token_lookup(&jt.id).await.unwrap().unwrap();
    assert_eq!((t.uses, hash.as_slice()), (2, &b"hash"[..]));

    let expired = join_token(&store, &p, 2, 0, 1_500).await;
    let err = store.node_enroll(&enroll(&p, &expired, 4, 2_000)).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Unauthenticated);

    let n = store.node_get(&id(NodeId::from_random, 1)).await.unwrap().unwrap();
    assert_eq!(n.status, NodeStatus::Pending);
    assert_eq!(n.desired_state, DesiredNodeState::Active);
    assert_eq!(n.capabilities.hostname, "host-1");
    assert_eq!(n.join_token_id, Some(jt.id));
}

pub(super) async fn session_open_fences_older_generations(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    let node = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap().value;
    let (n, ev) = store.node_session_open(&node.id, 5, None, "r1", 3_000).await.unwrap();
    assert_eq!(n.status, NodeStatus::Ready);
    assert_eq!(n.session_generation, 5);
    assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["node.status_changed"]);
    // Same generation (a reconnect of the same process): accepted, no event.
    let (_, ev) = store.node_session_open(&node.id, 5, None, "r1", 3_500).await.unwrap();
    assert!(ev.is_empty());
    // New capabilities: one update event.
    let caps = NodeCapabilities { hostname: "renamed".into(), ..Default::default() };
    let (n, ev) = store.node_session_open(&node.id, 6, Some(&caps), "r1", 4_000).await.unwrap();
    assert_eq!(n.capabilities.hostname, "renamed");
    assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["node.updated"]);
    // Older generation: refused, nothing changes.
    let err = store.node_session_open(&node.id, 4, None, "r2", 5_000).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Aborted);
    let n = store.node_get(&node.id).await.unwrap().unwrap();
    assert_eq!((n.session_generation, n.last_seen_at), (6, 4_000));
    // Unknown node.
    let err = store.node_session_open(&id(NodeId::from_random, 9), 1, None, "r1", 1).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Unauthenticated);
}

pub(super) async fn sessions_open_in_one_batch_answer_each(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    let a = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap().value;
    let b = store.node_enroll(&enroll(&p, &jt, 2, 2_000)).await.unwrap().value;
    let c = store.node_enroll(&enroll(&p, &jt, 3, 2_000)).await.unwrap().value;
    store.node_session_open(&b.id, 7, None, "r1", 2_500).await.unwrap();
    let head = store.events_head().await.unwrap();
    let caps = NodeCapabilities { hostname: "c-renamed".into(), ..Default::default() };
    let missing = id(NodeId::from_random, 9);
    let opens = [
        SessionOpen { id: &a.id, generation: 1, capabilities: None },
        SessionOpen { id: &b.id, generation: 6, capabilities: None },
        SessionOpen { id: &missing, generation: 1, capabilities: None },
        SessionOpen { id: &c.id, generation: 2, capabilities: Some(&caps) },
    ];
    let out = store.node_sessions_open(&opens, "r2", 3_000).await.unwrap();
    assert_eq!(out.len(), 4);
    let (na, ev) = out[0].as_ref().unwrap();
    assert_eq!((na.status, na.session_generation, na.last_seen_at), (NodeStatus::Ready, 1, 3_000));
    assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["node.status_changed"]);
    let Err(e) = &out[1] else { panic!("an older generation is fenced") };
    assert!(e.to_string().contains("older"), "{e}");
    assert!(out[2].is_err(), "an unknown node is refused");
    let (nc, ev) = out[3].as_ref().unwrap();
    assert_eq!(nc.capabilities.hostname, "c-renamed");
    assert_eq!(ev.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["node.updated", "node.status_changed"]);
    // The fenced node is untouched; three events were appended in all.
    let nb = store.node_get(&b.id).await.unwrap().unwrap();
    assert_eq!((nb.session_generation, nb.last_seen_at), (7, 2_500));
    assert_eq!(store.events_head().await.unwrap(), head + 3);
}

pub(super) async fn status_changes_append_events_in_order(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    let a = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap().value;
    let b = store.node_enroll(&enroll(&p, &jt, 2, 2_000)).await.unwrap().value;
    let head = store.events_head().await.unwrap();
    let changes = vec![
        StatusChange { id: a.id.clone(), status: NodeStatus::Unreachable, at: 3_000, last_seen_at: 2_500 },
        StatusChange { id: b.id.clone(), status: NodeStatus::Pending, at: 3_000, last_seen_at: 2_500 },
        StatusChange { id: a.id.clone(), status: NodeStatus::Down, at: 3_100, last_seen_at: 2_500 },
    ];
    let applied = store.node_status_apply(&changes).await.unwrap();
    // b was already pending: skipped.
    assert_eq!(applied.len(), 2);
    assert!(applied[0].1 < applied[1].1);
    let events = org_events_since(&store, &org(), "node.", head, 100).await.unwrap();
    let kinds: Vec<_> =
        events.iter().map(|e| (e.subject.clone(), e.payload["status"].as_str().unwrap().to_owned())).collect();
    assert_eq!(kinds, [(a.id.to_string(), "unreachable".into()), (a.id.to_string(), "down".into())]);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.events_head().await.unwrap(), events.last().unwrap().seq);
    // Node events carry the organisation, and the project a node is dedicated to.
    assert!(events.iter().all(|e| e.org_id == Some(org()) && e.project_id == Some(p.clone())));
    // Other projects and organisations see nothing.
    assert!(events_since(&store, &id(ProjectId::from_random, 7), "", 0, 100).await.unwrap().is_empty());
    assert!(org_events_since(&store, &id(OrgId::from_random, 7), "", 0, 100).await.unwrap().is_empty());
}

pub(super) async fn list_filters_and_pages(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    for n in 1..=7u8 {
        let _ = store.node_enroll(&enroll(&p, &jt, n, 2_000 + i64::from(n % 3))).await.unwrap();
    }
    store.node_session_open(&id(NodeId::from_random, 3), 1, None, "r", 3_000).await.unwrap();
    let all = NodeFilter { scope: NodeScope::Project { org: org(), project: p.clone() }, status: None, pool: None };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.node_list(&all, after.as_ref(), 3).await.unwrap();
        assert!(page.nodes.len() <= 3);
        seen.extend(page.nodes.iter().map(|n| (n.registered_at, n.id.clone())));
        match page.next {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages come in (registered_at, id) order without gaps or repeats");

    let ready = NodeFilter { status: Some(NodeStatus::Ready), ..all.clone() };
    let page = store.node_list(&ready, None, 100).await.unwrap();
    assert_eq!(page.nodes.len(), 1);
    let odd = NodeFilter { pool: Some("odd".into()), ..all.clone() };
    assert_eq!(store.node_list(&odd, None, 100).await.unwrap().nodes.len(), 4);
    let other =
        NodeFilter { scope: NodeScope::Project { org: org(), project: id(ProjectId::from_random, 9) }, ..all.clone() };
    assert!(store.node_list(&other, None, 100).await.unwrap().nodes.is_empty(), "dedicated to another project");
    let whole_org = NodeFilter { scope: NodeScope::Org(org()), ..all.clone() };
    assert_eq!(store.node_list(&whole_org, None, 100).await.unwrap().nodes.len(), 7);
    let elsewhere = NodeFilter { scope: NodeScope::Org(id(OrgId::from_random, 9)), ..all };
    assert!(store.node_list(&elsewhere, None, 100).await.unwrap().nodes.is_empty());
    assert_eq!(store.node_list_all().await.unwrap().len(), 7);
}

pub(super) async fn deregister_removes_and_logs(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    let a = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap().value;
    let err = store.node_deregister(&id(NodeId::from_random, 8), 3_000).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::NotFound);
    let committed = store.node_deregister(&a.id, 3_000).await.unwrap();
    let (gone, seq) = (committed.value, committed.seq.expect("deregistering appends an event"));
    assert_eq!(gone.id, a.id);
    assert_eq!(store.node_get(&a.id).await.unwrap(), None);
    let ev = org_events_since(&store, &org(), "node.deregistered", seq - 1, 10).await.unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].seq, seq, "the write answers its event's sequence number");
    assert_eq!(ev[0].subject, a.id.to_string());
}

pub(super) async fn join_token_revoke_and_list(store: Store) {
    let p = project(&store).await;
    let a = join_token(&store, &p, 1, 0, 10_000).await;
    let b = join_token(&store, &p, 2, 0, 10_000).await;
    let _expired = join_token(&store, &p, 3, 0, 1_500).await;
    assert_eq!(store.join_token_list(TokenScope::Project(&p), false, 2_000).await.unwrap().len(), 2);
    assert_eq!(store.join_token_list(TokenScope::Project(&p), true, 2_000).await.unwrap().len(), 3);
    let revoked = store.join_token_revoke(TokenScope::Project(&p), &a.id, 2_500).await.unwrap().value;
    assert_eq!(revoked.revoked_at, Some(2_500));
    let again = store.join_token_revoke(TokenScope::Project(&p), &a.id, 2_600).await.unwrap().value;
    assert_eq!(again.revoked_at, Some(2_500), "first revocation time is kept");
    let active: Vec<_> =
        store.join_token_list(TokenScope::Project(&p), false, 2_700).await.unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(active, [b.id]);
    let err = store.join_token_revoke(TokenScope::Project(&id(ProjectId::from_random, 5)), &a.id, 1).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::NotFound);
    let err = store.node_enroll(&enroll(&p, &a, 1, 2_800)).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Unauthenticated, "a revoked token enrols nothing");
}

pub(super) fn token(p: &ProjectId, n: u8, role: tether_types::Role, expires_at: Option<i64>) -> crate::TokenRecord {
    crate::TokenRecord {
        id: id(tether_types::TokenId::from_random, n),
        org_id: Some(org()),
        project_id: Some(p.clone()),
        role,
        org_role: None,
        description: String::new(),
        created_at: 1_000,
        expires_at,
        revoked_at: None,
    }
}

pub(super) async fn last_admin_token_is_never_revoked(store: Store) {
    use tether_types::Role;
    let p = project(&store).await;
    let admin = token(&p, 1, Role::Admin, None);
    let viewer = token(&p, 2, Role::Viewer, None);
    let expired_admin = token(&p, 3, Role::Admin, Some(1_500));
    for t in [&admin, &viewer, &expired_admin] {
        let _ = store.token_record(t).await.unwrap();
    }
    let err = store.token_revoke(TokenScope::Project(&p), &admin.id, 2_000).await.unwrap_err();
    let err = Error::from(err);
    assert_eq!(err.code, ErrorCode::FailedPrecondition, "{err}");
    assert!(err.message.contains("last admin token"), "{err}");
    assert_eq!(store.tokens_revoked().await.unwrap(), vec![], "nothing changed");
    // Others may go; with a second admin, so may the first.
    let _ = store.token_revoke(TokenScope::Project(&p), &viewer.id, 2_000).await.unwrap();
    let _ = store.token_revoke(TokenScope::Project(&p), &expired_admin.id, 2_000).await.unwrap();
    let second = token(&p, 4, Role::Admin, Some(10_000));
    let _ = store.token_record(&second).await.unwrap();
    let _ = store.token_revoke(TokenScope::Project(&p), &admin.id, 2_100).await.unwrap();
    let err = store.token_revoke(TokenScope::Project(&p), &second.id, 2_200).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::FailedPrecondition, "now the second is the last");
}

pub(super) async fn leases_flush_only_moves_forward(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    let a = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap().value;
    let head = store.events_head().await.unwrap();
    store.node_leases_flush(&[(a.id.clone(), 5_000)], "r1").await.unwrap();
    store.node_leases_flush(&[(a.id.clone(), 4_000)], "r1").await.unwrap();
    assert_eq!(store.node_get(&a.id).await.unwrap().unwrap().last_seen_at, 5_000);
    assert_eq!(store.events_head().await.unwrap(), head, "a lease flush is not an event");

    // Many nodes in one flush (more than one statement's batch), some moving
    // forward and some not, and an id that is not there.
    let jt = join_token(&store, &p, 2, 0, 10_000).await;
    let mut nodes = Vec::new();
    for i in 0..1_100u32 {
        let mut e = enroll(&p, &jt, 1, 2_000);
        let mut b = [0xab; 10];
        b[..4].copy_from_slice(&i.to_be_bytes());
        e.id = NodeId::from_random(b);
        e.capabilities.hostname = format!("n{i}");
        nodes.push(store.node_enroll(&e).await.unwrap().value);
    }
    let leases: Vec<(NodeId, i64)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.clone(), if i % 2 == 0 { 9_000 } else { 1_000 }))
        .chain([(NodeId::from_random([7; 10]), 9_000)])
        .collect();
    let first: Vec<(NodeId, i64)> = nodes.iter().map(|n| (n.id.clone(), 5_000)).collect();
    store.node_leases_flush(&first, "r2").await.unwrap();
    store.node_leases_flush(&leases, "r2").await.unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let got = store.node_get(&n.id).await.unwrap().unwrap().last_seen_at;
        assert_eq!(got, if i % 2 == 0 { 9_000 } else { 5_000 }, "node {i}");
    }
}

pub(super) async fn auto_quarantine_holds_and_an_operator_wins(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 0, 10_000).await;
    let a = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap().value;
    let why = serde_json::json!({"node_id": a.id, "score": 0.2});
    // Only over the desired state version the decision saw.
    let stale = store.auto_quarantine(&a.id, a.desired_state_version + 1, "auto", &why, 3_000).await.unwrap();
    assert_eq!(stale.value, None);
    assert_eq!(stale.seq, None, "nothing written");
    let held = store.auto_quarantine(&a.id, a.desired_state_version, "auto", &why, 3_000).await.unwrap();
    let q = held.value.expect("quarantined");
    assert_eq!((q.desired_state, q.desired_state_reason.as_str()), (DesiredNodeState::Quarantined, "auto"));
    let holds = store.auto_quarantines().await.unwrap();
    assert_eq!(holds.len(), 1);
    assert_eq!((holds[0].desired_version, holds[0].quarantined_at), (q.desired_state_version, 3_000));
    let again = store.auto_quarantine(&a.id, q.desired_state_version, "auto", &why, 3_001).await.unwrap();
    assert_eq!(again.value, None, "only an active node is quarantined");

    // Released while no one changed it.
    let back = store.auto_release(&a.id, &why, 4_000).await.unwrap().value.expect("released");
    assert_eq!(back.desired_state, DesiredNodeState::Active);
    assert!(store.auto_quarantines().await.unwrap().is_empty());

    // Held again, then an operator quarantines it by hand: no release, and
    // the hold is gone.
    let q = store.auto_quarantine(&a.id, back.desired_state_version, "auto", &why, 5_000).await.unwrap().value.unwrap();
    let manual =
        store.node_set_desired(&a.id, DesiredNodeState::Quarantined, "bad disk", None, 5_500).await.unwrap().value;
    assert!(manual.desired_state_version > q.desired_state_version);
    assert_eq!(store.auto_release(&a.id, &why, 6_000).await.unwrap().value, None);
    assert!(store.auto_quarantines().await.unwrap().is_empty());
    let n = store.node_get(&a.id).await.unwrap().unwrap();
    assert_eq!((n.desired_state, n.desired_state_reason.as_str()), (DesiredNodeState::Quarantined, "bad disk"));

    // Each decision is an event; a deregistered node's hold goes with it.
    let kinds: Vec<String> =
        org_events_since(&store, &org(), "quarantine.", 0, 10).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["quarantine.applied", "quarantine.released", "quarantine.applied"]);
    let _ = store.node_set_desired(&a.id, DesiredNodeState::Active, "", None, 7_000).await.unwrap();
    let n = store.node_get(&a.id).await.unwrap().unwrap();
    let _ = store.auto_quarantine(&a.id, n.desired_state_version, "auto", &why, 7_100).await.unwrap().value.unwrap();
    let _ = store.node_deregister(&a.id, 8_000).await.unwrap();
    assert!(store.auto_quarantines().await.unwrap().is_empty());
}
