//! The event log API end to end: a watcher that leaves after event N and
//! resumes (gRPC `since_sequence`, SSE `Last-Event-ID`) receives N+1
//! onwards exactly once, including what was committed while it was away and
//! across a control-plane restart (served from the database, since a new
//! process's in-memory tail starts at its head); retention refuses a resume
//! point it removed, naming the oldest sequence still held; every payload
//! seen has its fields documented in docs/events.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tether_proto::pb;
use tether_proto::pb::event_service_client::EventServiceClient;
use tonic::Code;

use crate::harness::*;

both_backends!(watchers_resume_exactly_once, retention_refuses_what_it_removed);

const WAIT: Duration = Duration::from_secs(20);
const KIND: &str = "join_token.";

async fn events(cp: &ControlPlane) -> EventServiceClient<Authed> {
    EventServiceClient::with_interceptor(cp.channel().await, bearer(Some(&cp.admin_token)))
}

/// `n` writes, each one `join_token.created` event.
async fn make_events(cp: &ControlPlane, n: usize) {
    let mut t = cp.tenancy_as(Some(&cp.admin_token)).await;
    for _ in 0..n {
        t.create_join_token(pb::CreateJoinTokenRequest { description: "events test".into(), ..Default::default() })
            .await
            .unwrap();
    }
}

fn watch(since: u64) -> pb::WatchEventsRequest {
    pb::WatchEventsRequest { kind_prefix: KIND.into(), since_sequence: since, ..Default::default() }
}

async fn take(s: &mut tonic::Streaming<pb::WatchEventsResponse>, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(WAIT, s.message()).await.expect("events in time").unwrap().expect("open");
        assert_eq!(Some(m.sequence), m.event.as_ref().map(|e| e.sequence));
        assert!(m.event.as_ref().unwrap().kind.starts_with(KIND), "{m:?}");
        out.push(m.sequence);
    }
    out
}

/// Every event after `after` matching `kind_prefix`, by pages.
async fn list_all(ev: &mut EventServiceClient<Authed>, kind_prefix: &str, org: &str, after: u64) -> Vec<pb::Event> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let r = ev
            .list_events(pb::ListEventsRequest {
                kind_prefix: kind_prefix.into(),
                organization_id: org.into(),
                after_sequence: after,
                // A small first page (paging works), then large ones.
                page_size: if out.is_empty() { 3 } else { 1000 },
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(r.events);
        match r.next_sequence {
            0 => return out,
            n => after = n,
        }
    }
}

fn seqs(events: &[pb::Event]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

/// SSE events (id, data) from `/v1/events:watch`, `n` of them.
async fn sse(cp: &ControlPlane, last_event_id: u64, n: usize) -> Vec<(u64, Value)> {
    let resp = crate::harness::http_client()
        .get(format!("http://{}/v1/events:watch?kindPrefix={KIND}&sinceSequence=1", cp.http_addr))
        .bearer_auth(&cp.admin_token)
        .header("Last-Event-ID", last_event_id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let (mut buf, mut out) = (String::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, body.next()).await.expect("SSE in time").unwrap().unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut data) = (None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<u64>().unwrap());
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                assert_eq!(data["sequence"].as_str(), Some(id.to_string().as_str()), "{data}");
                out.push((id, data));
            }
        }
    }
    out
}

/// docs/events.md: each kind's payload schema, and each schema's fields.
fn documented() -> (BTreeMap<String, String>, BTreeMap<String, BTreeSet<String>>) {
    let doc = std::fs::read_to_string(workspace_root().join("docs/events.md")).unwrap();
    let (mut kinds, mut fields) = (BTreeMap::new(), BTreeMap::<String, BTreeSet<String>>::new());
    let mut section: Option<String> = None;
    for line in doc.lines() {
        if let Some(name) = line.strip_prefix("### `").and_then(|l| l.strip_suffix('`')) {
            section = Some(name.to_string());
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 || !cells[1].starts_with('`') {
            continue;
        }
        let first = cells[1].trim_matches('`').to_string();
        match &section {
            None => {
                let schema = cells[2].split('`').nth(1).unwrap_or_default().to_string();
                kinds.insert(first, schema);
            }
            Some(s) => {
                fields.entry(s.clone()).or_default().insert(first);
            }
        }
    }
    (kinds, fields)
}

async fn watchers_resume_exactly_once(backend: Backend) {
    let mut cp = ControlPlane::start(backend).await;
    let mut ev = events(&cp).await;

    // A watcher from now sees three of five, then goes away after event N.
    let mut s = ev.watch_events(watch(0)).await.unwrap().into_inner();
    make_events(&cp, 5).await;
    let first = take(&mut s, 3).await;
    let n = first[2];
    drop(s);
    make_events(&cp, 4).await;
    let expected = seqs(&list_all(&mut ev, KIND, "", n).await);
    assert_eq!(expected.len(), 2 + 4, "two it did not read, four written while it was away");

    // gRPC: since_sequence = N gives N+1 onwards once; the next message is
    // a new event, not a repeat.
    let mut s = ev.watch_events(watch(n)).await.unwrap().into_inner();
    assert_eq!(take(&mut s, 6).await, expected);
    make_events(&cp, 1).await;
    let newest = take(&mut s, 1).await;
    assert!(newest[0] > *expected.last().unwrap());
    assert_eq!(seqs(&list_all(&mut ev, KIND, "", *expected.last().unwrap()).await), newest);
    drop(s);
    let all: Vec<u64> = expected.iter().chain(&newest).copied().collect();

    // SSE: Last-Event-ID = N (over the URL's sinceSequence=1) gives the same.
    let got = sse(&cp, n, all.len()).await;
    assert_eq!(got.iter().map(|(id, _)| *id).collect::<Vec<_>>(), all);
    assert!(got.iter().all(|(_, d)| d["event"]["kind"].as_str().unwrap().starts_with(KIND)));
    // A reconnect with the fourth id gets the rest.
    let rest = sse(&cp, all[3], all.len() - 4).await;
    assert_eq!(rest.iter().map(|(id, _)| *id).collect::<Vec<_>>(), all[4..]);

    // tetherctl follows the same log.
    let (code, out, err) = tetherctl(
        &cp,
        &cp.admin_token,
        &["-o", "json", "events", "watch", "--kind", KIND, "--since", &n.to_string(), "--count", "2"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<u64> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(lines, all[..2]);
    let (code, out, err) =
        tetherctl(&cp, &cp.admin_token, &["events", "list", "--kind", KIND, "--after", &n.to_string()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("join_token.created") && out.contains(&all[0].to_string()), "{out}");

    // More than one database page (500) after N, then a restart: the tail
    // starts at the head, so a resume from N is served from the database
    // in pages, then from the tail, still exactly once.
    make_events(&cp, 600).await;
    let all: Vec<u64> = seqs(&list_all(&mut ev, KIND, "", n).await);
    assert_eq!(all.len(), 7 + 600);
    cp.stop(libc::SIGTERM).await;
    cp.restart().await;
    let mut ev = events(&cp).await;
    let mut s = ev.watch_events(watch(n)).await.unwrap().into_inner();
    assert_eq!(take(&mut s, all.len()).await, all);
    make_events(&cp, 1).await;
    let after_restart = take(&mut s, 1).await;
    assert!(after_restart[0] > *all.last().unwrap());

    // Scope: the organisation's log holds its own events too; the
    // project's does not.
    let mine = list_all(&mut ev, "", "", 0).await;
    let org = mine.iter().find(|e| e.kind.starts_with(KIND)).unwrap().organization_id.clone();
    let org_wide = list_all(&mut ev, "organization.", &org, 0).await;
    assert!(org_wide.iter().any(|e| e.kind == "organization.created"), "{org_wide:?}");
    assert!(!mine.iter().any(|e| e.kind.starts_with("organization.")));

    // Every event's kind is described, at version 1, with every payload
    // field documented.
    let (kinds, fields) = documented();
    for e in mine.iter().chain(&org_wide) {
        let schema = kinds.get(&e.kind).unwrap_or_else(|| panic!("{} is not in docs/events.md", e.kind));
        assert_eq!(e.schema_version, 1, "{e:?}");
        let known = &fields[schema];
        for key in e.payload.as_ref().unwrap().fields.keys() {
            assert!(known.contains(key), "{}: payload field {key} is not documented under {schema}", e.kind);
        }
    }
}

async fn retention_refuses_what_it_removed(backend: Backend) {
    let opts = Options {
        extra_args: ["--event-retention-count", "5", "--event-retention-interval", "100ms"].map(String::from).to_vec(),
        ..Options::default()
    };
    let cp = ControlPlane::start_opts(backend, opts).await;
    let mut ev = events(&cp).await;
    make_events(&cp, 10).await;
    let held = eventually(WAIT, "retention keeps five", || {
        let mut ev = ev.clone();
        async move {
            let all = list_all(&mut ev, "", "", 0).await;
            (all.len() <= 5).then_some(all)
        }
    })
    .await;
    let r = ev.list_events(pb::ListEventsRequest::default()).await.unwrap().into_inner();
    let oldest = r.oldest_sequence;
    assert!(oldest > 1 && held.first().is_none_or(|e| e.sequence >= oldest), "{oldest} {held:?}");

    // gRPC: a resume point below what is held is refused, naming the oldest.
    let err = ev.watch_events(watch(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("the oldest sequence still held is"), "{}", err.message());
    let named: u64 = err.message().split("still held is ").nth(1).unwrap().split(':').next().unwrap().parse().unwrap();
    assert!(named >= oldest, "{named} < {oldest}");
    // SSE: the same, as a JSON error before the stream opens.
    let resp = crate::harness::http_client()
        .get(format!("http://{}/v1/events:watch", cp.http_addr))
        .bearer_auth(&cp.admin_token)
        .header("Last-Event-ID", "1")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!((status, body["code"].as_str()), (409, Some("failed_precondition")), "{body}");
    // A resume point still held works.
    let last = held.last().unwrap().sequence;
    let mut s = ev.watch_events(pb::WatchEventsRequest { since_sequence: last, ..Default::default() }).await.unwrap();
    make_events(&cp, 1).await;
    let m = tokio::time::timeout(WAIT, s.get_mut().message()).await.unwrap().unwrap().unwrap();
    assert!(m.sequence > last);
    // Bad resume points are refused clearly.
    let resp = crate::harness::http_client()
        .get(format!("http://{}/v1/events:watch", cp.http_addr))
        .bearer_auth(&cp.admin_token)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}
