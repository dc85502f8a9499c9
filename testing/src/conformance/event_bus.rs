//! The event-bus conformance suite. Every case panics with an explanation on failure.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use composable_rust_core::{Delivery, EventBus, EventBusError, EventMetadata, EventStream, SerializedEvent, SubscribeOptions};
use futures::StreamExt;

use super::unique;

/// What a bus supports; cases for unsupported features are skipped, explicitly and logged.
#[derive(Debug, Clone, Copy)]
pub struct BusCapabilities {
    /// Named consumer groups share work.
    pub consumer_groups: bool,
    /// `nack` leads to redelivery.
    pub redelivery: bool,
    /// How long to wait after subscribing before publishing (group join, partition assignment).
    pub settle: Duration,
    /// How long to wait for one delivery before failing.
    pub receive_timeout: Duration,
}

impl BusCapabilities {
    /// Everything supported, no settling needed.
    pub fn full() -> Self {
        Self { consumer_groups: true, redelivery: true, settle: Duration::ZERO, receive_timeout: Duration::from_secs(10) }
    }
}

fn topic(prefix: &str) -> String {
    unique(prefix).replace('-', "_")
}

fn event(n: u32) -> SerializedEvent {
    let mut metadata = EventMetadata::now().with_correlation_id(format!("corr-{n}")).with_causation_id("cause");
    metadata.headers.insert("tenant".into(), "acme".into());
    SerializedEvent::new("Numbered.v1", Bytes::from(n.to_be_bytes().to_vec()), Some(metadata))
}

fn number(d: &Delivery) -> u32 {
    u32::from_be_bytes(d.event().data[..].try_into().expect("4-byte payload"))
}

async fn next(stream: &mut EventStream, caps: &BusCapabilities, what: &str) -> Delivery {
    match tokio::time::timeout(caps.receive_timeout, stream.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("{what}: stream yielded an error: {e}"),
        Ok(None) => panic!("{what}: stream ended"),
        Err(elapsed) => panic!("{what}: nothing delivered within {:?} ({elapsed})", caps.receive_timeout),
    }
}

async fn settle(caps: &BusCapabilities) {
    if !caps.settle.is_zero() {
        tokio::time::sleep(caps.settle).await;
    }
}

/// Runs every case on buses from `factory`.
pub async fn run_all<F, Fut>(factory: F, caps: BusCapabilities)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventBus>>,
{
    publish_then_receive_in_order(factory().await, caps).await;
    patterns_select_topics(factory().await, caps).await;
    several_topics_merge_into_one_stream(factory().await, caps).await;
    invalid_topics_are_refused(factory().await).await;
    if caps.consumer_groups {
        group_members_share_the_work(factory().await, caps).await;
        different_groups_each_get_everything(factory().await, caps).await;
        default_groups_of_different_topic_sets_are_different(factory().await, caps).await;
    } else {
        tracing::warn!("bus conformance: consumer group cases not applicable to this bus");
    }
    if caps.redelivery {
        nack_redelivers(factory().await, caps).await;
    } else {
        tracing::warn!("bus conformance: redelivery case not applicable to this bus");
    }
}

/// Events arrive in publish order with id, type, payload and metadata intact.
pub async fn publish_then_receive_in_order(bus: Arc<dyn EventBus>, caps: BusCapabilities) {
    let t = topic("order");
    let mut stream = bus.subscribe_with(&[&t], SubscribeOptions::exclusive()).await.expect("subscribe");
    settle(&caps).await;
    let sent: Vec<SerializedEvent> = (0..5).map(event).collect();
    for e in &sent {
        bus.publish(&t, e).await.expect("publish");
    }
    for (i, want) in sent.iter().enumerate() {
        let d = next(&mut stream, &caps, "in-order delivery").await;
        let got = d.event();
        assert_eq!(d.topic().as_str(), t);
        assert_eq!(got.event_id, want.event_id, "delivery {i} out of order or lost");
        assert_eq!(got.event_type, want.event_type);
        assert_eq!(got.data, want.data);
        assert_eq!(got.metadata.correlation_id, want.metadata.correlation_id);
        assert_eq!(got.metadata.causation_id, want.metadata.causation_id);
        assert_eq!(got.metadata.headers, want.metadata.headers);
        assert_eq!(d.attempt(), 1);
        d.ack().await.expect("ack");
    }
}

/// `*` matches one segment, `>` the rest; nothing else is delivered.
pub async fn patterns_select_topics(bus: Arc<dyn EventBus>, caps: BusCapabilities) {
    let root = topic("shop");
    let one = format!("{root}.*.events");
    let rest = format!("{root}.audit.>");
    let mut stream = bus.subscribe_with(&[&one, &rest], SubscribeOptions::exclusive()).await.expect("subscribe");
    settle(&caps).await;
    let matching = [format!("{root}.order.events"), format!("{root}.audit.x"), format!("{root}.audit.x.y")];
    let not_matching = [format!("{root}.order.events.extra"), format!("{root}.events"), format!("{root}.audit")];
    for (i, t) in (100u32..).zip(&not_matching) {
        bus.publish(t, &event(i)).await.expect("publish");
    }
    for (i, t) in (0u32..).zip(&matching) {
        bus.publish(t, &event(i)).await.expect("publish");
    }
    let mut got = HashSet::new();
    for _ in 0..matching.len() {
        let d = next(&mut stream, &caps, "pattern delivery").await;
        assert!(number(&d) < 100, "event on non-matching topic {} delivered", d.topic());
        got.insert(number(&d));
        d.ack().await.expect("ack");
    }
    assert_eq!(got, HashSet::from([0, 1, 2]));
    let extra = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(extra.is_err(), "unexpected extra delivery: {extra:?}");
}

/// One subscription to several topics receives from all of them.
pub async fn several_topics_merge_into_one_stream(bus: Arc<dyn EventBus>, caps: BusCapabilities) {
    let (a, b) = (topic("orders"), topic("payments"));
    let mut stream = bus.subscribe_with(&[&a, &b], SubscribeOptions::exclusive()).await.expect("subscribe");
    settle(&caps).await;
    bus.publish(&a, &event(1)).await.expect("publish");
    bus.publish(&b, &event(2)).await.expect("publish");
    let mut got = HashSet::new();
    for _ in 0..2 {
        let d = next(&mut stream, &caps, "merged delivery").await;
        got.insert((d.topic().to_string(), number(&d)));
        d.ack().await.expect("ack");
    }
    assert_eq!(got, HashSet::from([(a, 1), (b, 2)]));
}

/// Malformed topics and patterns give `InvalidTopic`.
pub async fn invalid_topics_are_refused(bus: Arc<dyn EventBus>) {
    for bad in ["", "a b", "a..b", "a.*", "a.>"] {
        let err = bus.publish(bad, &event(0)).await.expect_err("bad topic must be refused");
        assert!(matches!(err, EventBusError::InvalidTopic(_)), "publish {bad:?}: {err:?}");
    }
    for bad in ["a.>.b", "a.b*", ""] {
        let err = bus.subscribe(&[bad]).await.err().expect("bad pattern must be refused");
        assert!(matches!(err, EventBusError::InvalidTopic(_)), "subscribe {bad:?}: {err:?}");
    }
    let err = bus.subscribe(&[]).await.err().expect("no topic must be refused");
    assert!(matches!(err, EventBusError::InvalidTopic(_)), "{err:?}");
}

/// Two members of one group: every event goes to exactly one of them.
pub async fn group_members_share_the_work(bus: Arc<dyn EventBus>, caps: BusCapabilities) {
    const N: u32 = 40;
    let t = topic("work");
    let group = unique("group");
    let mut m1 = bus.subscribe_with(&[&t], SubscribeOptions::group(&group)).await.expect("member 1");
    let mut m2 = bus.subscribe_with(&[&t], SubscribeOptions::group(&group)).await.expect("member 2");
    settle(&caps).await;
    for i in 0..N {
        bus.publish(&t, &event(i)).await.expect("publish");
    }
    let mut seen: Vec<u32> = Vec::new();
    while seen.len() < N as usize {
        let d = tokio::select! {
            d = next(&mut m1, &caps, "group member 1") => d,
            d = next(&mut m2, &caps, "group member 2") => d,
        };
        seen.push(number(&d));
        d.ack().await.expect("ack");
    }
    let unique_seen: HashSet<u32> = seen.iter().copied().collect();
    assert_eq!(unique_seen.len(), N as usize, "an event went to two members: {seen:?}");
    assert_eq!(unique_seen, (0..N).collect::<HashSet<_>>());
    let extra = tokio::time::timeout(Duration::from_millis(200), async {
        tokio::select! { d = m1.next() => d, d = m2.next() => d }
    })
    .await;
    assert!(extra.is_err(), "a group member received an event twice: {extra:?}");
}

/// Two groups each receive every event.
pub async fn different_groups_each_get_everything(bus: Arc<dyn EventBus>, caps: BusCapabilities) {
    const N: u32 = 10;
    let t = topic("fanout");
    let mut g1 = bus.subscribe_with(&[&t], SubscribeOptions::group(unique("g1"))).await.expect("group 1");
    let mut g2 = bus.subscribe_with(&[&t], SubscribeOptions::group(unique("g2"))).await.expect("group 2");
    settle(&caps).await;
    for i in 0..N {
        bus.publish(&t, &event(i)).await.expect("publish");
    }
    for (name, s) in [("group 1", &mut g1), ("group 2", &mut g2)] {
        let mut got = Vec::new();
        for _ in 0..N {
            let d = next(s, &caps, name).await;
            got.push(number(&d));
            d.ack().await.expect("ack");
        }
        got.sort_unstable();
        assert_eq!(got, (0..N).collect::<Vec<_>>(), "{name} must get every event");
    }
}

/// `subscribe` (the default group) to two different sets of topics that read alike once joined with
/// `-` (`[x-m, xz]` and `[x, m-xz]`): the sets must get different groups, each receiving every
/// event of its own topics, never sharing (splitting) them or refusing the second subscription.
pub async fn default_groups_of_different_topic_sets_are_different(bus: Arc<dyn EventBus>, caps: BusCapabilities) {
    let x = topic("dg");
    let (first, second) = ([format!("{x}-m"), format!("{x}z")], [x.clone(), format!("m-{x}z")]);
    let mut s1 = bus.subscribe(&first.each_ref().map(String::as_str)).await.expect("subscribe to the first set");
    let mut s2 = bus.subscribe(&second.each_ref().map(String::as_str)).await.expect("subscribe to the second set (its own default group)");
    settle(&caps).await;
    for (i, t) in (0u32..).zip(first.iter().chain(&second)) {
        bus.publish(t, &event(i)).await.expect("publish");
    }
    for (name, s, want) in [("first set", &mut s1, [0, 1]), ("second set", &mut s2, [2, 3])] {
        let mut got = Vec::new();
        for _ in 0..2 {
            let d = next(s, &caps, name).await;
            got.push(number(&d));
            d.ack().await.expect("ack");
        }
        got.sort_unstable();
        assert_eq!(got, want, "the {name} must get every event of its topics");
    }
}

/// A negatively acknowledged delivery comes again, marked as a further attempt.
pub async fn nack_redelivers(bus: Arc<dyn EventBus>, caps: BusCapabilities) {
    let t = topic("retry");
    let mut stream = bus.subscribe_with(&[&t], SubscribeOptions::group(unique("retrying"))).await.expect("subscribe");
    settle(&caps).await;
    let e = event(7);
    bus.publish(&t, &e).await.expect("publish");
    let first = next(&mut stream, &caps, "first delivery").await;
    assert_eq!(first.event().event_id, e.event_id);
    first.nack().await.expect("nack");
    let again = next(&mut stream, &caps, "redelivery").await;
    assert_eq!(again.event().event_id, e.event_id, "the nacked event must come again");
    assert!(again.attempt() >= 2, "redelivery must count as a further attempt, got {}", again.attempt());
    again.ack().await.expect("ack");
}
