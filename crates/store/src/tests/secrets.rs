//! Sealed secrets: versions, copies, deletion, and what goes with a node.

use super::*;

fn copy(node: &NodeId, n: u8) -> SecretCopy {
    SecretCopy { node_id: node.clone(), public_key: vec![n; 32], enc: vec![n; 32], ciphertext: vec![n; 48] }
}

pub(super) async fn secrets_versions_copies_and_deletes(store: Store) {
    let p = project(&store).await;
    let jt = join_token(&store, &p, 1, 10, i64::MAX).await;
    let a = store.node_enroll(&enroll(&p, &jt, 1, 2_000)).await.unwrap().value.id;
    let b = store.node_enroll(&enroll(&p, &jt, 2, 2_000)).await.unwrap().value.id;
    let keys = store.node_sealing_keys().await.unwrap();
    let want: std::collections::BTreeSet<_> = [(a.clone(), vec![1; 32]), (b.clone(), vec![2; 32])].into();
    assert_eq!(keys.into_iter().collect::<std::collections::BTreeSet<_>>(), want);

    assert_eq!(store.secret_next_version(&p, "db").await.unwrap(), 1);
    let v1 = store.secret_put(&p, "db", 1, &[copy(&a, 1)], 3_000).await.unwrap().value;
    assert_eq!((v1.version, v1.sealed_to.clone()), (1, vec![a.clone()]));
    // A put sealed for a version another put took is refused.
    let err = store.secret_put(&p, "db", 1, &[copy(&a, 1)], 3_100).await.unwrap_err();
    assert_eq!(Error::from(err).code, ErrorCode::Aborted);
    let v2 = store.secret_put(&p, "db", 2, &[copy(&a, 1), copy(&b, 2)], 3_200).await.unwrap().value;
    assert_eq!(v2.sealed_to.len(), 2);
    assert_eq!(store.secret_get(&p, "db", None).await.unwrap().unwrap().version, 2);
    assert_eq!(store.secret_get(&p, "db", Some(1)).await.unwrap().unwrap(), v1);
    assert_eq!(store.secret_get(&p, "nope", None).await.unwrap(), None);
    let list = store.secret_list(&p).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].versions.clone(), list[0].updated_at), (vec![1, 2], 3_200));

    // Copies: one per node and version; another for the same node is ignored.
    assert_eq!(store.secret_copy(&p, "db", 1, &a).await.unwrap(), Some(copy(&a, 1)));
    assert_eq!(store.secret_copy(&p, "db", 1, &b).await.unwrap(), None);
    assert!(store.secret_copy_add(&p, "db", 1, &copy(&b, 2), 3_300).await.unwrap().value);
    assert!(!store.secret_copy_add(&p, "db", 1, &copy(&b, 9), 3_300).await.unwrap().value);
    assert_eq!(store.secret_copy(&p, "db", 1, &b).await.unwrap(), Some(copy(&b, 2)));
    let holders = store.secret_holders_all().await.unwrap();
    assert_eq!(holders.len(), 2);
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert!(holders.iter().all(|h| h.holders == both), "{holders:?}");

    // Deleting one version, then all; numbers are not reused.
    assert_eq!(store.secret_delete(&p, "db", Some(1), 4_000).await.unwrap().value, vec![1]);
    assert_eq!(store.secret_copy(&p, "db", 1, &a).await.unwrap(), None);
    assert!(!store.secret_copy_add(&p, "db", 1, &copy(&a, 1), 4_100).await.unwrap().value);
    assert_eq!(store.secret_delete(&p, "db", None, 4_200).await.unwrap().value, vec![2]);
    assert_eq!(store.secret_delete(&p, "db", None, 4_300).await.unwrap().value, Vec::<u32>::new());
    assert!(store.secret_list(&p).await.unwrap().is_empty());
    assert!(store.secret_holders_all().await.unwrap().is_empty());
    assert_eq!(store.secret_next_version(&p, "db").await.unwrap(), 3);

    // A deregistered node's copies go with it.
    let v3 = store.secret_put(&p, "db", 3, &[copy(&a, 1), copy(&b, 2)], 5_000).await.unwrap().value;
    assert_eq!(v3.sealed_to.len(), 2);
    let _ = store.node_deregister(&b, 5_100).await.unwrap();
    assert_eq!(store.secret_get(&p, "db", None).await.unwrap().unwrap().sealed_to, vec![a.clone()]);
    assert_eq!(store.node_sealing_keys().await.unwrap(), vec![(a.clone(), vec![1; 32])]);
}
