//! Many concurrent publishes: each one stored exactly once, per-stream order kept.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use composable_rust_core::{EventBus, SerializedEvent, StreamId, SubscribeOptions, Version};
use futures::StreamExt;
use support::{broker, unique_topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_each_stored_once_in_stream_order() {
    const STREAMS: u64 = 64;
    const PER_STREAM: u64 = 100;
    let Some((_broker, brokers)) = broker() else { return };
    let bus = support::bus(&brokers).await;
    let second_producer = support::bus(&brokers).await;
    let topic = unique_topic("integrity");
    bus.create_topic(&topic, 3, 1).await.unwrap();
    // One task per stream publishing in order, all streams at once, from two producers: many
    // batches in flight to each partition.
    let tasks: Vec<_> = (0..STREAMS)
        .map(|s| {
            let (bus, topic) = (if s % 2 == 0 { bus.clone() } else { second_producer.clone() }, topic.clone());
            tokio::spawn(async move {
                for v in 1..=PER_STREAM {
                    let mut e = SerializedEvent::new("N.v1", format!("{s}:{v}").into_bytes(), None);
                    e.stream_id = Some(StreamId::new(format!("s{s}")).unwrap());
                    e.stream_version = Some(Version(v));
                    bus.publish(&topic, &e).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut s = bus.subscribe_with(&[&topic], SubscribeOptions::group(unique_topic("check"))).await.unwrap();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut count = 0;
    while count < STREAMS * PER_STREAM {
        let d = tokio::time::timeout(Duration::from_secs(30), s.next()).await.expect("all messages within 30 s").unwrap().unwrap();
        let stream = d.event().stream_id.as_ref().unwrap().to_string();
        let v = d.event().stream_version.unwrap().0;
        let prev = last.insert(stream.clone(), v).unwrap_or(0);
        assert_eq!(v, prev + 1, "{stream}: version {v} after {prev}: lost, duplicated or reordered");
        count += 1;
        d.ack().await.unwrap();
    }
    let extra = tokio::time::timeout(Duration::from_secs(2), s.next()).await;
    assert!(extra.is_err(), "more messages than published: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_mid_stream_loses_nothing() {
    const N: u64 = 3000;
    let Some((_broker, brokers)) = broker() else { return };
    let bus = support::bus(&brokers).await;
    let topics: Vec<String> = (0..3).map(|_| unique_topic("joining")).collect();
    let group = unique_topic("joiners");
    for t in &topics {
        bus.create_topic(t, 3, 1).await.unwrap();
    }
    let publisher = {
        let (bus, topics) = (bus.clone(), topics.clone());
        tokio::spawn(async move {
            for i in 0..N {
                let mut e = SerializedEvent::new("N.v1", i.to_string().into_bytes(), None);
                e.stream_id = Some(StreamId::new(format!("s{}", i % 16)).unwrap());
                bus.publish(&topics[usize::try_from(i % 3).unwrap()], &e).await.unwrap();
                if i % 500 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(std::collections::BTreeMap::<u64, u32>::new()));
    let member = |delay: u64| {
        let (bus, topics, group, seen) = (bus.clone(), topics.clone(), group.clone(), std::sync::Arc::clone(&seen));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let mut s = bus.subscribe_with(&refs, SubscribeOptions::group(group)).await.unwrap();
            while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(8), s.next()).await {
                let d = item.unwrap();
                *seen.lock().entry(String::from_utf8(d.event().data.to_vec()).unwrap().parse::<u64>().unwrap()).or_default() += 1;
                d.ack().await.unwrap();
            }
        })
    };
    let (a, b) = (member(0), member(700));
    publisher.await.unwrap();
    a.await.unwrap();
    b.await.unwrap();
    let seen = seen.lock();
    let missing: Vec<u64> = (0..N).filter(|i| !seen.contains_key(i)).collect();
    let twice = seen.values().filter(|n| **n > 1).count();
    assert!(
        missing.is_empty(),
        "{} messages never delivered to the group (and {twice} delivered more than once), first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}
