//! A consumer *process* killed with SIGKILL mid-handling loses nothing: another member of its
//! group receives exactly what it had not acknowledged.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use composable_rust_core::{EventBus, SerializedEvent, SubscribeOptions};
use futures::StreamExt;
use support::{bus, isolated_config, server};

const CHILD: &str = "CR_NATS_CHILD";

/// SIGKILLs the child when dropped, also when the test fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn number(d: &composable_rust_core::Delivery) -> u32 {
    u32::from_be_bytes(d.event().data[..].try_into().unwrap())
}

/// Runs only inside the child process: consumes, acknowledges even numbers, reports, then hangs
/// (holding the odd ones unacknowledged) until killed.
#[tokio::test]
async fn child_consumer() {
    let Ok(spec) = std::env::var(CHILD) else { return };
    let mut parts = spec.split(' ');
    let (url, stream, prefix) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let mut config = composable_rust_nats::NatsConfig::new(url);
    config = config.with_stream_name(stream.to_string());
    config = config.with_subject_prefix(prefix.to_string());
    config = config.with_storage(composable_rust_nats::Storage::Memory);
    config = config.with_ack_wait(Duration::from_secs(1));
    let bus = bus(config).await;
    let mut s = bus.subscribe_with(&["jobs"], SubscribeOptions::group("job-workers")).await.unwrap();
    println!("ready");
    for _ in 0..10 {
        let d = s.next().await.unwrap().unwrap();
        let n = number(&d);
        if n % 2 == 0 {
            d.ack().await.unwrap();
            bus.raw_client().flush().await.unwrap();
            println!("acked {n}");
        } else {
            println!("holding {n}");
            std::mem::forget(d);
        }
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[tokio::test]
async fn a_killed_consumer_process_loses_nothing() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some((_server, url)) = server() else { return };
    let mut config = isolated_config(&url);
    config = config.with_ack_wait(Duration::from_secs(1));
    let bus = bus(config.clone()).await;

    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["child_consumer", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, format!("{url} {} {}", config.stream_name(), config.subject_prefix()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    // The test harness prints its own lines first.
    // The test harness prints its own lines first; "ready" means the group's consumer exists.
    while !lines.next().expect("child output").unwrap().ends_with("ready") {}
    for i in 0..10u32 {
        bus.publish("jobs", &SerializedEvent::new("Job.v1", i.to_be_bytes().to_vec(), None)).await.unwrap();
    }
    let mut acked = HashSet::new();
    let mut held = HashSet::new();
    while acked.len() + held.len() < 10 {
        let line = lines.next().expect("child output").unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked.insert(n.parse::<u32>().unwrap());
        } else if let Some(n) = line.strip_prefix("holding ") {
            held.insert(n.parse::<u32>().unwrap());
        }
    }
    drop(child);

    let mut s = bus.subscribe_with(&["jobs"], SubscribeOptions::group("job-workers")).await.unwrap();
    let mut again = HashSet::new();
    while again.len() < held.len() {
        let d = tokio::time::timeout(Duration::from_secs(10), s.next()).await.expect("redelivery").unwrap().unwrap();
        assert!(!acked.contains(&number(&d)), "an acknowledged event came again: {}", number(&d));
        again.insert(number(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(again, held, "exactly what the killed process had not acknowledged");
    assert_eq!(acked, HashSet::from([0, 2, 4, 6, 8]));
}
