//! Group commit against a real server: concurrent appends to different streams share statements,
//! yet each keeps its own expected-version check, versions, positions, outbox intents and inbox mark;
//! a group that fails as a whole (a reused event id, an inbox mark already present) hands every
//! append back to run alone, each with its precise outcome, nothing written twice.

mod support;

use std::collections::BTreeMap;

use composable_rust_core::{
    AppendRequest, AppendResult, EventStore, EventStoreError, ExpectedVersion, GlobalPosition, OutboxIntent, SerializedEvent, StreamId, Topic, Version,
};
use composable_rust_postgres::{PostgresConfig, PostgresEventStore};
use futures::future::join_all;
use uuid::Uuid;

fn event(label: &str) -> SerializedEvent {
    SerializedEvent::new("Labelled.v1", label.as_bytes().to_vec(), None)
}

fn stream(prefix: &str) -> StreamId {
    StreamId::new(format!("{prefix}-{}", Uuid::new_v4().simple())).unwrap()
}

/// One statement slot, so appends launched together queue up and form groups.
async fn grouping_store() -> Option<PostgresEventStore> {
    let url = support::database_url()?;
    let mut config = PostgresConfig::new(url);
    config = config.with_group_statements_in_flight(1);
    let store = PostgresEventStore::connect_with(config).await.expect("connect");
    store.migrate().await.expect("migrate");
    Some(store)
}

async fn seeded(store: &PostgresEventStore, prefix: &str, events: usize) -> StreamId {
    let s = stream(prefix);
    let batch = (1..=events).map(|i| event(&format!("{prefix} seed {i}"))).collect();
    store.append(AppendRequest::new(s.clone(), ExpectedVersion::NoStream, batch)).await.unwrap();
    s
}

fn labels(events: &[SerializedEvent]) -> Vec<String> {
    events.iter().map(|e| String::from_utf8(e.data.to_vec()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_statements_and_keep_their_own_outcomes() {
    let Some(store) = grouping_store().await else { return };
    let topic = Topic::new("grouped.events").unwrap();
    let mut rounds = 0;
    // Whether a round forms groups depends on scheduling; the store's counters tell. Every round
    // checks every outcome either way.
    while store.group_commit_stats().grouped_appends == 0 || rounds < 3 {
        rounds += 1;
        assert!(rounds <= 50, "50 rounds of 40 concurrent appends never formed a group: {:?}", store.group_commit_stats());
        let exact = seeded(&store, "exact", 2).await;
        let stale = seeded(&store, "stale", 3).await;
        let taken = seeded(&store, "taken", 1).await;
        let any = seeded(&store, "any", 1).await;
        let consumer = format!("saga-{rounds}");
        let handled = Uuid::new_v4();

        let mut requests = Vec::new();
        let fresh: Vec<StreamId> = (0..36).map(|_| stream("fresh")).collect();
        for (i, s) in fresh.iter().enumerate() {
            let events = vec![event(&format!("{s} a")), event(&format!("{s} b"))];
            let mut r = AppendRequest::new(s.clone(), ExpectedVersion::NoStream, events);
            if i % 3 == 0 {
                r.outbox.push(OutboxIntent { topic: topic.clone(), event_id: r.events[1].event_id });
            }
            requests.push(r);
        }
        requests.push(AppendRequest::new(exact.clone(), ExpectedVersion::Exact(Version(2)), vec![event("exact 3")]));
        requests.push(AppendRequest::new(stale.clone(), ExpectedVersion::Exact(Version(1)), vec![event("stale never")]));
        requests.push(AppendRequest::new(taken.clone(), ExpectedVersion::NoStream, vec![event("taken never")]));
        requests.push(AppendRequest::new(any.clone(), ExpectedVersion::Any, vec![event("any 2")]).with_inbox(&consumer, handled));
        let outbox_ids: Vec<Uuid> = requests.iter().flat_map(|r| r.outbox.iter().map(|o| o.event_id)).collect();

        let results: Vec<Result<AppendResult, EventStoreError>> = join_all(requests.iter().cloned().map(|r| store.append(r))).await;
        let by_stream: BTreeMap<&str, &Result<AppendResult, EventStoreError>> = requests.iter().map(|r| r.stream_id.as_str()).zip(&results).collect();

        for s in &fresh {
            let r = by_stream[s.as_str()].as_ref().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!((r.first_version, r.next_expected_version, r.duplicate), (Version(1), Version(2), false), "{s}");
            let stored = store.read_stream(s, Version(1), 10).await.unwrap();
            assert_eq!(labels(&stored), [format!("{s} a"), format!("{s} b")]);
            // Positions come from a sequence shared with concurrent writers: the first event sits at
            // first_position, the second somewhere after it.
            let at_first = store.read_all(GlobalPosition(r.first_position.0 - 1), 1).await.unwrap();
            assert_eq!(at_first[0].event.event_id, stored[0].event_id, "first_position of {s}");
        }
        let r = by_stream[exact.as_str()].as_ref().unwrap();
        assert_eq!((r.first_version, r.next_expected_version), (Version(3), Version(3)));
        assert_eq!(labels(&store.read_stream(&exact, Version(3), 10).await.unwrap()), ["exact 3"]);
        match by_stream[stale.as_str()] {
            Err(EventStoreError::ConcurrencyConflict { actual, .. }) => assert_eq!(*actual, Version(3)),
            other => panic!("stale expected version: {other:?}"),
        }
        match by_stream[taken.as_str()] {
            Err(EventStoreError::ConcurrencyConflict { actual, .. }) => assert_eq!(*actual, Version(1)),
            other => panic!("NoStream on an existing stream: {other:?}"),
        }
        assert_eq!(store.stream_version(&stale).await.unwrap(), Version(3), "a refused append writes nothing");
        assert_eq!(store.stream_version(&taken).await.unwrap(), Version(1));
        let r = by_stream[any.as_str()].as_ref().unwrap();
        assert_eq!((r.first_version, r.next_expected_version), (Version(2), Version(2)));
        let again = store.append(AppendRequest::new(any.clone(), ExpectedVersion::Any, vec![event("any again")]).with_inbox(&consumer, handled)).await;
        assert!(matches!(again, Err(EventStoreError::AlreadyProcessed { .. })), "the inbox mark was written with the grouped append: {again:?}");

        let pending: Vec<Uuid> = store.pending_publications(10_000).await.unwrap().into_iter().map(|p| p.event.event_id).collect();
        for id in &outbox_ids {
            assert!(pending.contains(id), "outbox intent for {id} stored with its events");
            store.mark_published(*id, &topic).await.unwrap();
        }
    }
    let stats = store.group_commit_stats();
    assert!(stats.grouped_appends >= 2 && stats.group_statements >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_fails_as_a_whole_gives_each_append_its_own_outcome() {
    let Some(store) = grouping_store().await else { return };
    let mut rounds = 0;
    while store.group_commit_stats().failed_groups == 0 || rounds < 3 {
        rounds += 1;
        assert!(rounds <= 50, "50 rounds never formed a failing group: {:?}", store.group_commit_stats());
        let stored = event("stored once");
        let original = stream("original");
        store.append(AppendRequest::new(original.clone(), ExpectedVersion::NoStream, vec![stored.clone()])).await.unwrap();
        let mut reused = stored.clone();
        reused.data = b"other content".to_vec().into();
        let consumer = format!("consumer-{rounds}");
        let handled = Uuid::new_v4();
        let marked = seeded(&store, "marked", 1).await;
        store.append(AppendRequest::new(marked.clone(), ExpectedVersion::Any, vec![event("first handling")]).with_inbox(&consumer, handled)).await.unwrap();

        let fresh: Vec<StreamId> = (0..30).map(|_| stream("bystander")).collect();
        let mut requests: Vec<AppendRequest> =
            fresh.iter().map(|s| AppendRequest::new(s.clone(), ExpectedVersion::NoStream, vec![event(s.as_str())])).collect();
        let thief = stream("thief");
        requests.insert(10, AppendRequest::new(thief.clone(), ExpectedVersion::NoStream, vec![reused]));
        requests.insert(20, AppendRequest::new(original.clone(), ExpectedVersion::Any, vec![stored.clone()]));
        requests.insert(25, AppendRequest::new(marked.clone(), ExpectedVersion::Any, vec![event("second handling")]).with_inbox(&consumer, handled));

        let results = join_all(requests.iter().cloned().map(|r| store.append(r))).await;
        let by_stream: BTreeMap<&str, &Result<AppendResult, EventStoreError>> = requests.iter().map(|r| r.stream_id.as_str()).zip(&results).collect();
        for s in &fresh {
            let r = by_stream[s.as_str()].as_ref().unwrap_or_else(|e| panic!("bystander {s}: {e}"));
            assert_eq!(r.next_expected_version, Version(1));
            assert_eq!(labels(&store.read_stream(s, Version(1), 10).await.unwrap()), [s.as_str()], "written exactly once");
        }
        assert!(matches!(by_stream[thief.as_str()], Err(EventStoreError::EventIdReused { .. })), "{:?}", by_stream[thief.as_str()]);
        assert_eq!(store.stream_version(&thief).await.unwrap(), Version(0), "nothing of the refused append stored");
        let retry = by_stream[original.as_str()].as_ref().expect("an identical retry is a success");
        assert!(retry.duplicate && retry.next_expected_version == Version(1), "{retry:?}");
        assert_eq!(store.stream_version(&original).await.unwrap(), Version(1));
        assert!(matches!(by_stream[marked.as_str()], Err(EventStoreError::AlreadyProcessed { .. })), "{:?}", by_stream[marked.as_str()]);
        assert_eq!(store.stream_version(&marked).await.unwrap(), Version(2), "the second handling wrote nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_to_one_stream_are_never_combined_and_keep_their_order() {
    let Some(store) = grouping_store().await else { return };
    let s = stream("sequence");
    // Forty concurrent Any-appends to one stream: each gets its own versions, none lost or doubled.
    let requests: Vec<AppendRequest> = (0..40).map(|i| AppendRequest::new(s.clone(), ExpectedVersion::Any, vec![event(&format!("{i}"))])).collect();
    let results = join_all(requests.into_iter().map(|r| store.append(r))).await;
    let mut versions: Vec<u64> = results.into_iter().map(|r| r.unwrap().first_version.0).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=40).collect::<Vec<_>>());
    let mut stored = labels(&store.read_stream(&s, Version(1), 100).await.unwrap());
    stored.sort_by_key(|l| l.parse::<u32>().unwrap());
    assert_eq!(stored, (0..40).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_hammering_the_same_streams_lose_nothing_and_double_nothing() {
    let Some(url) = support::database_url() else { return };
    // Two stores = two group writers with their own pools, as two processes would have: their
    // groups overlap on the same stream rows, mixing exact-version and any-version appends.
    let mut stores = Vec::new();
    for _ in 0..2 {
        let store = PostgresEventStore::connect(&url).await.expect("connect");
        store.migrate().await.expect("migrate");
        stores.push(std::sync::Arc::new(store));
    }
    let streams: Vec<StreamId> = (0..10).map(|_| stream("shared")).collect();
    let tasks: Vec<_> = (0..16_usize)
        .map(|task| {
            let store = std::sync::Arc::clone(&stores[task % 2]);
            let streams = streams.clone();
            tokio::spawn(async move {
                let mut conflicts = 0_u32;
                for i in 0..60_usize {
                    let s = &streams[(i * 7 + task) % streams.len()];
                    let label = format!("{task}/{i}");
                    loop {
                        let expected = if i % 3 == 0 { ExpectedVersion::Any } else { ExpectedVersion::from_loaded(store.stream_version(s).await.unwrap()) };
                        match store.append(AppendRequest::new(s.clone(), expected, vec![event(&label)])).await {
                            Ok(_) => break,
                            Err(EventStoreError::ConcurrencyConflict { .. }) => conflicts += 1,
                            Err(e) => panic!("task {task} append {i}: {e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut labels_seen = Vec::new();
    for s in &streams {
        let events = store_events(&stores[0], s).await;
        let versions: Vec<u64> = events.iter().map(|e| e.stream_version.unwrap().0).collect();
        assert_eq!(versions, (1..=events.len() as u64).collect::<Vec<_>>(), "{s}: versions without gap or duplicate");
        assert_eq!(stores[1].stream_version(s).await.unwrap(), Version(events.len() as u64));
        labels_seen.extend(labels(&events));
    }
    labels_seen.sort();
    let mut expected: Vec<String> = (0..16).flat_map(|t| (0..60).map(move |i| format!("{t}/{i}"))).collect();
    expected.sort();
    assert_eq!(labels_seen, expected, "every successful append stored exactly once");
    let grouped: u64 = stores.iter().map(|s| s.group_commit_stats().grouped_appends).sum();
    assert!(grouped > 0, "sixteen concurrent writers formed no group: the test did not exercise group commit");
}

async fn store_events(store: &PostgresEventStore, s: &StreamId) -> Vec<SerializedEvent> {
    store.read_stream(s, Version(1), 10_000).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_outbox_marks_share_statements_and_each_lands() {
    let Some(store) = grouping_store().await else { return };
    let topic = Topic::new("marked.events").unwrap();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let s = stream("marked");
        let mut request = AppendRequest::new(s, ExpectedVersion::NoStream, (0..64).map(|i| event(&format!("marked {i}"))).collect());
        request.outbox = request.events.iter().map(|e| OutboxIntent { topic: topic.clone(), event_id: e.event_id }).collect();
        let ids: Vec<Uuid> = request.events.iter().map(|e| e.event_id).collect();
        store.append(request).await.unwrap();
        let before = store.outbox_mark_statements();
        let marked = join_all(ids.iter().map(|id| store.mark_published(*id, &topic))).await;
        assert!(marked.iter().all(Result::is_ok), "{marked:?}");
        let statements = store.outbox_mark_statements() - before;
        let pending: Vec<Uuid> = store.pending_publications(100_000).await.unwrap().into_iter().map(|p| p.event.event_id).collect();
        assert!(ids.iter().all(|id| !pending.contains(id)), "a mark did not land");
        assert!((1..=64).contains(&statements), "{statements} statements for 64 marks");
        if statements < 64 {
            break;
        }
        // Whether marks queue up together depends on scheduling; try again.
        assert!(rounds < 20, "20 rounds of 64 concurrent marks never shared a statement");
    }
    // Marking again, or an id that is not in the outbox, changes nothing and is no error.
    store.mark_published(Uuid::new_v4(), &topic).await.expect("an unknown id is no error");
}
