//! A stock NATS client (nats-py) reads what this bus publishes, headers included.

mod support;

use std::process::Command;

use composable_rust_core::{EventBus, EventMetadata, SerializedEvent};
use support::{bus, isolated_config, server};

fn python_with_nats() -> bool {
    Command::new("python3").args(["-c", "import nats"]).output().is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn nats_py_reads_the_event_and_its_headers() {
    let Some((_server, url)) = server() else { return };
    if !python_with_nats() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but python3 cannot import nats (pip install nats-py; scripts/test.sh does)");
        eprintln!("skipping: python3 with nats-py not available");
        return;
    }
    let config = isolated_config(&url);
    let bus = bus(config.clone()).await;
    let event = SerializedEvent::new("OrderPlaced.v1", vec![1, 2, 3], Some(EventMetadata::now().with_correlation_id("order-7").with_causation_id("cmd-9")));
    bus.publish("order.events", &event).await.unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop_read.py");
    let subject = format!("{}.order.events", config.subject_prefix());
    let out = Command::new("python3").args([script, &url, config.stream_name(), &subject]).output().expect("run python3");
    assert!(out.status.success(), "nats-py failed: {}", String::from_utf8_lossy(&out.stderr));
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    let id = event.event_id.to_string();
    assert_eq!(read["subject"], subject);
    assert_eq!(read["headers"]["Nats-Msg-Id"], id.as_str());
    assert_eq!(read["headers"]["cr-event-id"], id.as_str());
    assert_eq!(read["headers"]["cr-event-type"], "OrderPlaced.v1");
    assert_eq!(read["headers"]["cr-correlation-id"], "order-7");
    assert_eq!(read["headers"]["cr-causation-id"], "cmd-9");
    assert_eq!(read["size"].as_u64().unwrap(), event.encode().unwrap().len() as u64, "the payload is the event envelope");
}
