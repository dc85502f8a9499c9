//! A throwaway `nats-server -js` for tests, or the user's server from `NATS_URL`.
//!
//! Under `CI=true` a missing server is a test failure, never a skip.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use composable_rust_nats::{NatsConfig, NatsEventBus, Storage};

/// A nats-server child process with JetStream and a private storage directory.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub store_dir: PathBuf,
}

impl NatsServer {
    /// Starts one on a free loopback port; `None` if `nats-server` is not installed.
    pub fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let store_dir = std::env::temp_dir().join(format!("cr-nats-{}", uuid::Uuid::new_v4().simple()));
        let mut server = Self { child: None, port, store_dir };
        server.spawn().then_some(server)
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nats-server did not listen on port {} within 10 s", self.port);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no clean shutdown, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "nats-server could not be restarted");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store_dir);
    }
}

/// The server to test against: `NATS_URL`, or a private one. `None` (skip) only outside CI.
pub fn server() -> Option<(Option<NatsServer>, String)> {
    if let Ok(url) = std::env::var("NATS_URL") {
        return Some((None, url));
    }
    if let Some(s) = NatsServer::start() {
        let url = s.url();
        return Some((Some(s), url));
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but no NATS server: install nats-server (scripts/test.sh does) or set NATS_URL");
    eprintln!("skipping: nats-server not installed and NATS_URL not set");
    None
}

/// A config with a stream and subject prefix of its own, so tests never see each other's messages.
pub fn isolated_config(url: &str) -> NatsConfig {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut config = NatsConfig::new(url);
    config = config.with_stream_name(format!("CR_TEST_{}", &id[..12]));
    config = config.with_subject_prefix(format!("t{}", &id[..12]));
    config = config.with_storage(Storage::Memory);
    config
}

pub async fn bus(config: NatsConfig) -> NatsEventBus {
    NatsEventBus::connect_with(config).await.expect("connect to NATS")
}
