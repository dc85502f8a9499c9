//! Consumer groups against a real broker: members split the partitions, offsets are committed only
//! after handling, and a member killed with SIGKILL mid-handling loses nothing: the group gets
//! exactly what the dead member had not acknowledged. A member that leaves hands its partitions to
//! the others.
//!
//! The kill test runs twice. On librdkafka's mock cluster (a Kafka-protocol group coordinator that
//! expires silent members and rebalances, as Kafka and Redpanda do) the survivor alone takes the dead
//! member's partitions over. On tansu 0.6 a member that missed its heartbeats is dropped but the
//! group keeps its generation, so the survivor keeps its old assignment until some member joins:
//! that run restarts the killed member and asserts the same hand-over across both. Against Redpanda
//! or Kafka (`KAFKA_BROKERS`) the survivor takes over before the restart and the assertions still hold.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use composable_rust_core::{Delivery, EventBus, EventBusError, EventStream, SerializedEvent, StreamId, SubscribeOptions, Version};
use composable_rust_redpanda::RedpandaEventBus;
use futures::StreamExt;
use rdkafka::mocking::MockCluster;
use support::{broker, bus, unique_topic};

const CHILD_SPEC: &str = "CR_KAFKA_CHILD";
const STREAMS: usize = 6;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn event(stream: usize, version: u64) -> SerializedEvent {
    let mut e = SerializedEvent::new("Numbered.v1", format!("s{stream}#{version}").into_bytes(), None);
    e.stream_id = Some(StreamId::new(format!("s{stream}")).unwrap());
    e.stream_version = Some(Version(version));
    e
}

fn label(d: &Delivery) -> String {
    String::from_utf8(d.event().data.to_vec()).unwrap()
}

fn version_of(label: &str) -> u64 {
    label.rsplit('#').next().unwrap().parse().unwrap()
}

/// The member run in a child process. Mode `hold`: acknowledges probes and versions 1-3, holds 4-6
/// without acknowledging them. Mode `ack-all`: acknowledges everything. Prints what it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of a_killed_member_hands_over_exactly_what_it_had_not_acknowledged"]
async fn child_member() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).try_init();
    let spec = std::env::var(CHILD_SPEC).expect("run by the parent test with CR_KAFKA_CHILD set");
    let mut parts = spec.split(' ');
    let (brokers, topic, group, mode) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let on_mock = parts.next() == Some("mock");
    // libtest has already printed `test child_member ... ` without a newline: start our lines afresh.
    println!();
    let bus = if on_mock { mock_member_bus(brokers).await } else { bus(brokers).await };
    let mut s = bus.subscribe_with(&[topic], SubscribeOptions::group(group)).await.unwrap();
    let mut held = Vec::new();
    while let Some(item) = s.next().await {
        let d = item.expect("delivery");
        let l = label(&d);
        if mode == "ack-all" || version_of(&l) <= 3 {
            d.ack().await.unwrap();
            println!("acked {l}");
        } else {
            println!("holding {l}");
            held.push(d);
        }
    }
}

/// A bus on librdkafka's mock cluster, which has no CreateTopics: the test makes its topics.
async fn mock_member_bus(brokers: &str) -> RedpandaEventBus {
    let mut config = support::config(brokers);
    config = config.with_auto_create_topics(None);
    RedpandaEventBus::connect_with(config).await.expect("connect to the mock cluster")
}

fn spawn_member(brokers: &str, topic: &str, group: &str, mode: &str, on_mock: bool) -> (KillOnDrop, mpsc::Receiver<String>) {
    let backend = if on_mock { "mock" } else { "broker" };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_member", "--nocapture", "--test-threads", "1"])
        .env(CHILD_SPEC, format!("{brokers} {topic} {group} {mode} {backend}"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child member");
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    (KillOnDrop(child), lines)
}

/// The next delivery within `wait`. Transient consumer errors are skipped: a member that was not
/// polled for `max.poll.interval.ms` (the test sleeps) is told so once and rejoins on the next poll.
async fn next(s: &mut EventStream, wait: Duration) -> Option<Delivery> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(d))) => return Some(d),
            Ok(Some(Err(e @ EventBusError::Unavailable { .. }))) => eprintln!("transient consumer error: {e}"),
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Ok(None) => panic!("stream ended"),
            Err(_) => return None,
        }
    }
}

/// What the test does once the member is killed.
#[derive(Clone, Copy, PartialEq)]
enum AfterKill {
    /// Nothing: the survivor must take the dead member's partitions over by itself.
    SurvivorAlone,
    /// Wait past the session timeout and start a fresh member (tansu needs a join to rebalance).
    RestartMember,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_hands_over_exactly_what_it_had_not_acknowledged() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let Some((_broker, brokers)) = broker() else { return };
    let bus = bus(&brokers).await;
    let topic = unique_topic("handover");
    let group = unique_topic("workers");
    bus.create_topic(&topic, 3, 1).await.unwrap();
    kill_a_member_mid_handling(&bus, &brokers, &topic, &group, false, AfterKill::RestartMember).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_members_partitions_go_to_the_survivor_on_the_librdkafka_mock_cluster() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let topic = unique_topic("takeover");
    let group = unique_topic("survivors");
    mock.create_topic(&topic, 3, 1).unwrap();
    let bus = mock_member_bus(&brokers).await;
    kill_a_member_mid_handling(&bus, &brokers, &topic, &group, true, AfterKill::SurvivorAlone).await;
}

/// A child member and this process's member split `topic`; the child acknowledges versions 1-3 and
/// holds 4-6 when it is killed. Afterwards exactly the held messages are handled again, by the
/// survivor (and the restarted member, if any): none lost, no acknowledged one repeated.
async fn kill_a_member_mid_handling(bus: &RedpandaEventBus, brokers: &str, topic: &str, group: &str, on_mock: bool, after: AfterKill) {
    let (child, child_lines) = spawn_member(brokers, topic, group, "hold", on_mock);
    let mut child = Some(child);
    let mut member = bus.subscribe_with(&[topic], SubscribeOptions::group(group)).await.unwrap();

    let mut child_acked = BTreeSet::new();
    let mut child_held = BTreeSet::new();
    let mut ours = BTreeSet::new();
    let drain_child = |acked: &mut BTreeSet<String>, held: &mut BTreeSet<String>| {
        while let Ok(line) = child_lines.try_recv() {
            if let Some(l) = line.strip_prefix("acked ") {
                acked.insert(l.to_owned());
            } else if let Some(l) = line.strip_prefix("holding ") {
                held.insert(l.to_owned());
            }
        }
    };

    // Probe (version 0 of every stream) until both members receive some: the partitions are split.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the two members never shared the partitions");
        for s in 0..STREAMS {
            bus.publish(topic, &event(s, 0)).await.unwrap();
        }
        while let Some(d) = next(&mut member, Duration::from_millis(500)).await {
            ours.insert(label(&d));
            d.ack().await.unwrap();
        }
        drain_child(&mut child_acked, &mut child_held);
        if !ours.is_empty() && !child_acked.is_empty() {
            break;
        }
    }
    ours.clear();
    child_acked.clear();

    let all: BTreeSet<String> = (1..=6).flat_map(|v| (0..STREAMS).map(move |s| format!("s{s}#{v}"))).collect();
    for v in 1..=6 {
        for s in 0..STREAMS {
            bus.publish(topic, &event(s, v)).await.unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // Until every message has reached a member. A partition can move during this phase (a member
    // that was slow to poll rejoins), so a message may reach both: compare sets, not counts.
    let covered =
        |ours: &BTreeSet<String>, acked: &BTreeSet<String>, held: &BTreeSet<String>| ours.iter().chain(acked).chain(held).collect::<BTreeSet<_>>().len();
    // Once they have, two more seconds let the child's acknowledged offsets be committed (and its
    // last lines arrive); then it is killed mid-handling.
    let mut settled_by = None;
    while settled_by.is_none_or(|t| Instant::now() < t) {
        if settled_by.is_none() && covered(&ours, &child_acked, &child_held) == all.len() {
            settled_by = Some(Instant::now() + Duration::from_secs(2));
        }
        assert!(settled_by.is_some() || Instant::now() < deadline, "not everything arrived: ours {ours:?} child {child_acked:?} {child_held:?}");
        if let Some(d) = next(&mut member, Duration::from_millis(200)).await {
            if version_of(&label(&d)) > 0 {
                ours.insert(label(&d));
            }
            d.ack().await.unwrap();
        }
        drain_child(&mut child_acked, &mut child_held);
    }
    assert!(!child_held.is_empty() && !ours.is_empty(), "both members must have had partitions");
    drop(child.take());
    let (_restarted, restarted_lines) = if after == AfterKill::RestartMember {
        // Past the session timeout the broker has dropped the dead member; the restarted one then
        // joins a group of live members only.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let (member, lines) = spawn_member(brokers, topic, group, "ack-all", on_mock);
        (Some(member), lines)
    } else {
        (None, mpsc::channel().1)
    };

    let mut handed_over = BTreeSet::new();
    let note = |l: String, handed_over: &mut BTreeSet<String>| {
        if version_of(&l) > 0 {
            assert!(handed_over.insert(l.clone()) || !child_held.contains(&l), "{l} handled twice after the restart");
        }
    };
    let drain_restarted = |handed_over: &mut BTreeSet<String>| {
        while let Ok(line) = restarted_lines.try_recv() {
            if let Some(l) = line.strip_prefix("acked ") {
                note(l.to_owned(), handed_over);
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while !child_held.is_subset(&handed_over) {
        assert!(Instant::now() < deadline, "never redelivered: {:?} (topic {topic}, group {group})", child_held.difference(&handed_over).collect::<Vec<_>>());
        if let Some(d) = next(&mut member, Duration::from_millis(300)).await {
            note(label(&d), &mut handed_over);
            d.ack().await.unwrap();
        }
        drain_restarted(&mut handed_over);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    while let Some(d) = next(&mut member, Duration::from_millis(500)).await {
        note(label(&d), &mut handed_over);
        d.ack().await.unwrap();
    }
    drain_restarted(&mut handed_over);
    assert_eq!(handed_over, child_held, "exactly the unacknowledged messages come again: none lost, no acknowledged one repeated");
    let union: BTreeSet<String> = ours.union(&child_acked).chain(&handed_over).cloned().collect();
    assert_eq!(union, all, "every message was handled by one member");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_hands_its_partitions_over_with_nothing_lost() {
    let Some((_broker, brokers)) = broker() else { return };
    let bus = bus(&brokers).await;
    let topic = unique_topic("leave");
    let group = unique_topic("leavers");
    bus.create_topic(&topic, 3, 1).await.unwrap();
    let mut first = bus.subscribe_with(&[&topic], SubscribeOptions::group(&group)).await.unwrap();
    let mut second = bus.subscribe_with(&[&topic], SubscribeOptions::group(&group)).await.unwrap();
    let mut seen_by = [BTreeSet::new(), BTreeSet::new()];
    // Probe until both members have partitions.
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen_by.iter().any(BTreeSet::is_empty) {
        assert!(Instant::now() < deadline, "the two members never shared the partitions");
        for s in 0..STREAMS {
            bus.publish(&topic, &event(s, 0)).await.unwrap();
        }
        for (i, m) in [&mut first, &mut second].into_iter().enumerate() {
            while let Some(d) = next(m, Duration::from_millis(300)).await {
                seen_by[i].insert(label(&d));
                d.ack().await.unwrap();
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(second);
    for v in 1..=3 {
        for s in 0..STREAMS {
            bus.publish(&topic, &event(s, v)).await.unwrap();
        }
    }
    let want: BTreeSet<String> = (1..=3).flat_map(|v| (0..STREAMS).map(move |s| format!("s{s}#{v}"))).collect();
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got != want {
        assert!(Instant::now() < deadline, "missing after the hand-over: {:?}", want.difference(&got).collect::<Vec<_>>());
        if let Some(d) = next(&mut first, Duration::from_millis(500)).await {
            if version_of(&label(&d)) > 0 {
                got.insert(label(&d));
            }
            d.ack().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_gets_what_it_had_not_acknowledged() {
    let Some((_broker, brokers)) = broker() else { return };
    let bus = bus(&brokers).await;
    let topic = unique_topic("restart");
    let group = unique_topic("restarting");
    bus.create_topic(&topic, 1, 1).await.unwrap();
    for v in 1..=6 {
        bus.publish(&topic, &event(0, v)).await.unwrap();
    }
    {
        let mut s = bus.subscribe_with(&[&topic], SubscribeOptions::group(&group)).await.unwrap();
        let mut held = Vec::new();
        for v in 1..=6 {
            let d = next(&mut s, Duration::from_secs(30)).await.expect("delivery before the restart");
            assert_eq!(version_of(&label(&d)), v);
            // 1 and 2 acknowledged; 3 held; 4 acknowledged out of order (cannot be committed past 3).
            if matches!(v, 1 | 2 | 4) {
                d.ack().await.unwrap();
            } else {
                held.push(d);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut s = bus.subscribe_with(&[&topic], SubscribeOptions::group(&group)).await.unwrap();
    let mut again = Vec::new();
    while let Some(d) = next(&mut s, Duration::from_secs(if again.is_empty() { 30 } else { 3 })).await {
        again.push(version_of(&label(&d)));
        d.ack().await.unwrap();
    }
    assert_eq!(again, [3, 4, 5, 6], "resumes at the first unacknowledged message, in partition order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resuming_inside_a_producer_batch_gets_the_rest_of_it() {
    let Some((_broker, brokers)) = broker() else { return };
    let bus = bus(&brokers).await;
    let topic = unique_topic("midbatch");
    let group = unique_topic("resumers");
    bus.create_topic(&topic, 1, 1).await.unwrap();
    // Published concurrently, so the producer may put several in one batch.
    let events: Vec<SerializedEvent> = (1..=10).map(|v| event(0, v)).collect();
    let sends = events.iter().map(|e| bus.publish(&topic, e));
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    {
        let mut s = bus.subscribe_with(&[&topic], SubscribeOptions::group(&group)).await.unwrap();
        for _ in 0..3 {
            next(&mut s, Duration::from_secs(30)).await.expect("a delivery").ack().await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut s = bus.subscribe_with(&[&topic], SubscribeOptions::group(&group)).await.unwrap();
    let mut rest = Vec::new();
    while let Some(d) = next(&mut s, Duration::from_secs(if rest.is_empty() { 30 } else { 3 })).await {
        rest.push(version_of(&label(&d)));
        d.ack().await.unwrap();
    }
    rest.sort_unstable();
    assert_eq!(rest, [4, 5, 6, 7, 8, 9, 10], "the group resumes at its committed offset, inside the batch or not");
}
