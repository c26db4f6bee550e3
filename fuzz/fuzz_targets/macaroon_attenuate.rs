//! Minted macaroons with any caveats: verification never panics, the
//! encoding round-trips, and adding a caveat to a valid macaroon only ever
//! narrows (never a higher role or organisation role, a later expiry, a
//! wider scope, or read-only lost) and never revives an expired one; a
//! key that did not sign it never verifies it.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tether_auth::{AuthError, Caveat, Claims, CredentialKind, KeyRing, Macaroon, RootKey};
use tether_types::{NodeId, OrgId, OrgRole, ProjectId, Role, TokenId, WorkloadId};

#[derive(Debug, Arbitrary)]
enum C {
    Operator,
    Agent,
    Org(u8),
    Project(u8),
    Role(u8),
    OrgRole(Option<bool>),
    Node(u8),
    Workload(u8),
    ReadOnly,
    Expires(i64),
}

fn role(n: u8) -> Role {
    [Role::Viewer, Role::Support, Role::Operator, Role::Admin][usize::from(n % 4)]
}

fn caveat(c: &C) -> Caveat {
    match *c {
        C::Operator => Caveat::Kind(CredentialKind::Operator),
        C::Agent => Caveat::Kind(CredentialKind::Agent),
        C::Org(n) => Caveat::Org(OrgId::from_random([n % 3; 10])),
        C::Project(n) => Caveat::Project(ProjectId::from_random([n % 3; 10])),
        C::Role(n) => Caveat::Role(role(n)),
        C::OrgRole(r) => Caveat::OrgRole(r.map(|admin| if admin { OrgRole::Admin } else { OrgRole::Viewer })),
        C::Node(n) => Caveat::Node(NodeId::from_random([n % 3; 10])),
        C::Workload(n) => Caveat::Workload(WorkloadId::from_random([n % 3; 10])),
        C::ReadOnly => Caveat::ReadOnly,
        C::Expires(t) => Caveat::ExpiresAt(t),
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    key: bool,
    caveats: Vec<C>,
    extra: C,
    now: i64,
}

/// A scope caveat narrows from "any" (None) to one.
fn within<T: PartialEq>(n: &Option<T>, w: &Option<T>) -> bool {
    w.is_none() || n == w
}

/// Whether `narrow` allows no more than `wide`.
fn narrower(narrow: &Claims, wide: &Claims) -> bool {
    narrow.kind == wide.kind
        && narrow.role <= wide.role
        && narrow.org_role <= wide.org_role
        && within(&narrow.org, &wide.org)
        && within(&narrow.project, &wide.project)
        && within(&narrow.node, &wide.node)
        && within(&narrow.workload, &wide.workload)
        && (narrow.read_only || !wide.read_only)
        && match (narrow.expires_at, wide.expires_at) {
            (_, None) => true,
            (Some(n), Some(w)) => n <= w,
            (None, Some(_)) => false,
        }
}

fuzz_target!(|input: Input| {
    let ring = KeyRing::new(vec![RootKey::new(0, &[7; 32]), RootKey::new(1, &[8; 32])]).unwrap();
    let key = if input.key { ring.current() } else { ring.get(0).unwrap() };
    let caveats: Vec<Caveat> = input.caveats.iter().take(16).map(caveat).collect();
    let m = Macaroon::mint(key, TokenId::from_random([1; 10]), &caveats);
    let back = Macaroon::decode(&m.encode()).expect("a minted macaroon decodes");
    assert_eq!(back, m);
    let wide = m.verify_in(&ring, input.now);
    let narrowed = m.clone().attenuate(&caveat(&input.extra));
    let narrow = narrowed.verify_in(&ring, input.now);
    match (&wide, &narrow) {
        (Ok(w), Ok(n)) => assert!(narrower(n, w), "{:?} widened {w:?} to {n:?}", input.extra),
        // The control plane only hands out complete macaroons, so the one
        // invalid kind a holder can have is an expired one: no caveat may
        // revive it. (One missing its kind or its node is never issued;
        // adding the missing caveat "completes" it, which grants nothing
        // anyone held.)
        (Err(AuthError::Expired), Ok(n)) => panic!("a caveat revived an expired macaroon: {n:?}"),
        _ => {}
    }
    // The other key never verifies it.
    let other = if input.key { ring.get(0).unwrap() } else { ring.current() };
    assert!(m.verify(other, input.now).is_err(), "verified with a key that did not sign it");
});
