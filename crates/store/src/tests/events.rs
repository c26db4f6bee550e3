use super::*;

fn query(scope: EventScope, after: i64) -> EventQuery {
    EventQuery::new(scope, after)
}

fn seqs(events: &[Event]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}

pub(super) async fn events_filter_page_and_prune(store: Store) {
    let p = project(&store).await;
    let head = store.events_head().await.unwrap();
    let a = join_token(&store, &p, 1, 0, 10_000).await;
    let b = audited(async {
        set_actor(Actor::new("tok-x", "admin"));
        join_token(&store, &p, 2, 0, 10_000).await
    })
    .await;
    let _ = store.join_token_revoke(TokenScope::Project(&p), &a.id, 5_000).await.unwrap();

    let all = store.events_query(&query(EventScope::Project(p.clone()), head), 100).await.unwrap();
    let kinds: Vec<_> = all.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["join_token.created", "join_token.created", "join_token.revoked"]);
    let pick = |f: &dyn Fn(&mut EventQuery)| {
        let mut q = query(EventScope::Project(p.clone()), head);
        f(&mut q);
        q
    };
    // The in-memory filter agrees with the query, both ways.
    let by = async |q: EventQuery| {
        let everything = store.events_query(&query(EventScope::All, 0), 10_000).await.unwrap();
        let got = seqs(&store.events_query(&q, 100).await.unwrap());
        let kept: Vec<i64> = everything.iter().filter(|e| e.seq > q.after && q.matches(e)).map(|e| e.seq).collect();
        assert_eq!(got, kept, "{q:?}");
        got
    };
    assert_eq!(by(pick(&|q| q.kind_prefix = "join_token.rev".into())).await, [all[2].seq]);
    // `_` is a literal, not LIKE's any-character.
    assert!(by(pick(&|q| q.kind_prefix = "join_token_".into())).await.is_empty());
    assert_eq!(by(pick(&|q| q.subject = Some(a.id.to_string()))).await, [all[0].seq, all[2].seq]);
    assert_eq!(by(pick(&|q| q.principal = Some("tok-x".into()))).await, [all[1].seq]);
    assert_eq!(all[1].subject, b.id.to_string());
    assert_eq!(by(pick(&|q| q.from_at = Some(2_000))).await, [all[2].seq]);
    assert_eq!(by(pick(&|q| q.until_at = Some(5_000))).await, [all[0].seq, all[1].seq]);
    // Scopes: the organisation sees its project's; others see nothing.
    assert_eq!(by(query(EventScope::Org(org()), head)).await, seqs(&all));
    assert!(by(query(EventScope::Org(id(OrgId::from_random, 9)), 0)).await.is_empty());
    assert!(by(query(EventScope::Project(id(ProjectId::from_random, 9)), 0)).await.is_empty());
    // Pages.
    let first = store.events_query(&query(EventScope::Project(p.clone()), head), 2).await.unwrap();
    assert_eq!(seqs(&first), seqs(&all[..2]));
    assert_eq!(by(query(EventScope::Project(p.clone()), first[1].seq)).await, [all[2].seq]);

    // Retention: by count, in batches, raising the floor.
    let everything = store.events_query(&query(EventScope::All, 0), 10_000).await.unwrap();
    let n = everything.len() as u64;
    assert!(n >= 4, "bootstrap events and ours");
    assert_eq!(store.events_bounds().await.unwrap(), (0, Some(everything[0].seq)));
    assert_eq!(store.events_prune(i64::MIN, 2, 1).await.unwrap(), 1, "one batch of one");
    assert_eq!(store.events_bounds().await.unwrap(), (everything[0].seq, Some(everything[1].seq)));
    assert_eq!(store.events_prune(i64::MIN, 2, 1_000).await.unwrap(), n - 3);
    let left = store.events_query(&query(EventScope::All, 0), 100).await.unwrap();
    assert_eq!(seqs(&left), seqs(&all[1..]));
    assert_eq!(store.events_bounds().await.unwrap(), (all[0].seq, Some(all[1].seq)));
    // By age: the one before 4 000 goes, the newer stays.
    assert_eq!(store.events_prune(4_000, 100, 1_000).await.unwrap(), 1);
    assert_eq!(store.events_bounds().await.unwrap(), (all[1].seq, Some(all[2].seq)));
    assert_eq!(store.events_prune(4_000, 100, 1_000).await.unwrap(), 0);
    // New events go on from the head, never below the floor.
    let _ = store.join_token_revoke(TokenScope::Project(&p), &b.id, 6_000).await.unwrap();
    assert!(store.events_head().await.unwrap() > all[2].seq);
}
