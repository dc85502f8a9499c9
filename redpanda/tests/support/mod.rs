//! A throwaway tansu broker (Kafka protocol, in-memory storage) for tests, or the user's cluster
//! from `KAFKA_BROKERS`.
//!
//! Under `CI=true` a missing broker is a test failure, never a skip.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use composable_rust_redpanda::{RedpandaConfig, RedpandaEventBus};

/// A tansu child process on a free loopback port.
pub struct Tansu {
    child: Child,
    pub port: u16,
}

fn tansu_binary() -> Option<std::path::PathBuf> {
    let in_path = Command::new("tansu").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if in_path {
        return Some("tansu".into());
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))?;
    let bin = home.join("bin").join("tansu");
    bin.exists().then_some(bin)
}

impl Tansu {
    /// Starts one; `None` if tansu is not installed.
    pub fn start() -> Option<Self> {
        let binary = tansu_binary()?;
        let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self { child, port });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("tansu did not listen on port {port} within 20 s");
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// librdkafka properties for the broker under test: `KAFKA_CLIENT_PROPERTIES` (`k=v,k=v`), which
/// scripts/test.sh sets with the tansu workaround below, or the workaround itself for a private tansu.
///
/// tansu 0.6 answers a fetch that starts inside a multi-record batch with the *next* batch, silently
/// skipping the rest of the first one: a consumer group resuming at a committed offset inside a
/// batch loses messages. One record per producer batch (`batch.num.messages=1`) avoids it; Kafka and
/// Redpanda need no workaround.
pub const TANSU_WORKAROUND: &str = "batch.num.messages=1";

fn client_properties() -> Vec<(String, String)> {
    let spec = std::env::var("KAFKA_CLIENT_PROPERTIES")
        .unwrap_or_else(|_| if std::env::var("KAFKA_BROKERS").is_ok() { String::new() } else { TANSU_WORKAROUND.into() });
    spec.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect()
}

/// The brokers to test against: `KAFKA_BROKERS`, or a private tansu. `None` (skip) only outside CI.
pub fn broker() -> Option<(Option<Tansu>, String)> {
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
        return Some((None, brokers));
    }
    if let Some(t) = Tansu::start() {
        let brokers = t.brokers();
        return Some((Some(t), brokers));
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but no Kafka broker: install tansu (scripts/services/kafka.sh install; scripts/test.sh does) or set KAFKA_BROKERS"
    );
    eprintln!("skipping: tansu not installed and KAFKA_BROKERS not set");
    None
}

/// Test settings: short session timeout and commit interval so hand-overs are quick.
pub fn config(brokers: &str) -> RedpandaConfig {
    let mut c = RedpandaConfig::new(brokers);
    c = c.with_session_timeout(Duration::from_secs(6));
    c = c.with_commit_interval(Duration::from_millis(200));
    c = c.with_metadata_refresh(Duration::from_millis(500));
    // Also the group's rebalance timeout: how long the broker waits for a silent member to rejoin
    // before reassigning its partitions. Kafka's 5 minutes would dominate the hand-over tests.
    c = c.with_property("max.poll.interval.ms", "10000");
    c = client_properties().into_iter().fold(c, |c, (k, v)| c.with_property(k, v));
    c
}

pub async fn bus(brokers: &str) -> RedpandaEventBus {
    RedpandaEventBus::connect_with(config(brokers)).await.expect("connect to the Kafka broker")
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}
