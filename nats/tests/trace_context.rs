//! W3C trace context over NATS: free-form metadata headers travel as `cr-header-*` NATS headers,
//! and a saga worker in another *process* continues the trace of the command that caused the event
//! (`traceparent` injected by the runtime, carried by the bus, taken as the step span's parent).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use composable_rust_core::event_headers::TRACEPARENT;
use composable_rust_core::{
    Aggregate, CodecError, CommandEnvelope, CommandHandler, CommandOutcome, DispatchError, DomainEvent, Effect, Effects, EventBus, EventMetadata, Reducer,
    Saga, SagaInput, SerializedEvent, SubscribeOptions, Topic, smallvec,
};
use composable_rust_runtime::trace_context::{self, TraceParent};
use composable_rust_runtime::{AggregateHandler, CommandRouter, Executor, SagaRunner};
use composable_rust_testing::InMemoryEventStore;
use futures::StreamExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use support::{bus, isolated_config, server};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

const CHILD: &str = "CR_NATS_TRACE_CHILD";
const TOPIC: &str = "shop.orders";
const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// The parent's side: an order aggregate publishing `OrderPlaced` to NATS.
#[derive(Debug, Clone, PartialEq)]
struct Place {
    id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Placed {
    id: String,
}

impl DomainEvent for Placed {
    fn event_type(&self) -> &'static str {
        "OrderPlaced.v1"
    }
}

struct Order;

impl Aggregate for Order {
    const AGGREGATE_TYPE: &'static str = "order";
    type State = ();
    type Command = Place;
    type Event = Placed;
    type Error = std::convert::Infallible;
    type Environment = ();

    fn aggregate_id(command: &Place) -> &str {
        &command.id
    }

    fn initial_state(_id: &str) {}

    fn handle(&self, (): &(), command: Place, (): &()) -> Result<Vec<Placed>, Self::Error> {
        Ok(vec![Placed { id: command.id }])
    }

    fn apply((): &mut (), _event: &Placed) {}

    fn topic() -> Option<Topic> {
        Some(Topic::new(TOPIC).unwrap())
    }
}

// The child's side: a saga answering each placed order with a `Ship` command.
#[derive(Debug, Clone, PartialEq)]
struct Ship {
    id: String,
}

struct Shipping;

impl Reducer for Shipping {
    type State = ();
    type Action = Placed;
    type Environment = ();

    fn reduce(&self, (): &mut (), placed: Placed, (): &()) -> Effects<Placed> {
        smallvec![Effect::dispatch(Ship { id: placed.id })]
    }
}

impl Saga for Shipping {
    const NAME: &'static str = "shipping";

    fn topics(&self) -> Vec<String> {
        vec![TOPIC.into()]
    }

    fn initial_state(&self, _instance_id: &str) {}

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<Placed>>, CodecError> {
        if event.event_type != "OrderPlaced.v1" {
            return Ok(None);
        }
        let placed: Placed = event.decode_data()?;
        Ok(Some(SagaInput { instance_id: placed.id.clone(), action: placed }))
    }
}

/// Takes the `Ship` commands in the child and reports the trace context they run in.
struct Shipper;

#[async_trait]
impl CommandHandler for Shipper {
    fn name(&self) -> &'static str {
        "shipper"
    }

    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        let tp = trace_context::current().map_or_else(|| "none".to_owned(), |tp| tp.to_string());
        println!("dispatched {:?} {tp}", envelope.command);
        Ok(CommandOutcome::HANDLED)
    }
}

/// Runs only inside the child process: a saga worker on NATS, its spans exported in memory; prints
/// `ready` once subscribed, then each finished span as `span NAME TRACE_ID`, then `done`.
#[test]
fn child_saga_worker() {
    let Ok(spec) = std::env::var(CHILD) else { return };
    let mut parts = spec.split(' ');
    let (url, stream, prefix) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("child")));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let config = composable_rust_nats::NatsConfig::new(url)
            .with_stream_name(stream.to_string())
            .with_subject_prefix(prefix.to_string())
            .with_storage(composable_rust_nats::Storage::Memory);
        let bus = Arc::new(bus(config).await);
        let router = CommandRouter::new();
        router.register::<Ship>(Arc::new(Shipper)).unwrap();
        let executor = Executor::builder().store(Arc::new(InMemoryEventStore::new())).bus(bus).commands(router).build();
        let worker = SagaRunner::new(Shipping, (), executor).spawn().await.unwrap();
        println!("ready");
        for _ in 0..3000 {
            if worker.stats().applied >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = worker.shutdown().await;
        println!("stats applied={} dead_lettered={}", stats.applied, stats.dead_lettered);
    });
    provider.force_flush().unwrap();
    for span in exporter.get_finished_spans().unwrap() {
        println!("span {} {}", span.name, span.span_context.trace_id());
    }
    println!("done");
}

/// Kills the child when dropped, also when the test fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_saga_step_in_another_process_continues_the_commands_trace() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some((_server, url)) = server() else { return };
    let config = isolated_config(&url);
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["child_saga_worker", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, format!("{url} {} {}", config.stream_name(), config.subject_prefix()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // The child's lines, read on a thread so that a silent child fails the test instead of hanging it.
    let (tx, lines) = mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || lines.recv_timeout(Duration::from_secs(60)).expect("a line from the child within 60 s");
    // The harness prints `test child_saga_worker ... ` first, on the same line.
    while !next().ends_with("ready") {}

    // This process: OpenTelemetry in memory, the order aggregate on NATS.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("parent")));
    let _default = tracing::subscriber::set_default(subscriber);
    let bus = Arc::new(bus(config).await);
    let executor = Executor::builder().store(Arc::new(InMemoryEventStore::new())).bus(bus).build();
    let orders = AggregateHandler::new(Order, (), executor).register().unwrap();
    let trace = async {
        orders.send(Place { id: "o-1".into() }).await.unwrap();
        trace_context::current().expect("the checkout span has a trace context")
    }
    .instrument(tracing::info_span!("checkout"))
    .await;

    let mut output = Vec::new();
    loop {
        let line = next();
        if line == "done" {
            break;
        }
        output.push(line);
    }
    let trace_id = trace.trace_id_hex();
    let steps: Vec<&String> = output.iter().filter(|l| l.starts_with("span saga_step ")).collect();
    assert_eq!(steps.len(), 1, "the child's output: {output:#?}");
    assert_eq!(steps[0].as_str(), format!("span saga_step {trace_id}"), "the child's step is in the parent's trace: {output:#?}");
    // The command the saga dispatched ran in that trace too, in the child.
    let dispatched = output.iter().find(|l| l.starts_with("dispatched ")).expect("the child dispatched Ship");
    let tp = TraceParent::parse(dispatched.rsplit(' ').next().unwrap()).expect("a trace context in the child's handler");
    assert_eq!(tp.trace_id_hex(), trace_id);
    // The worker's own span is not in it.
    assert!(output.iter().any(|l| l.starts_with("span saga ") && !l.ends_with(&trace_id)), "{output:#?}");
    assert!(output.contains(&"stats applied=1 dead_lettered=0".to_owned()), "{output:#?}");
}

#[tokio::test]
async fn free_form_headers_travel_as_nats_headers_and_unrepresentable_ones_stay_in_the_envelope() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some((_server, url)) = server() else { return };
    let config = isolated_config(&url);
    let bus = bus(config.clone()).await;
    let subject = format!("{}.{TOPIC}", config.subject_prefix());
    let mut raw = bus.raw_client().subscribe(subject).await.unwrap();
    let mut delivered = bus.subscribe_with(&[TOPIC], SubscribeOptions::exclusive()).await.unwrap();

    let mut metadata = EventMetadata::now().with_correlation_id("line\nbreak");
    metadata.headers.insert(TRACEPARENT.into(), GOOD.into());
    metadata.headers.insert("tenant".into(), "acme".into());
    metadata.headers.insert("bad:name".into(), "x".into());
    metadata.headers.insert("multi".into(), "one\r\ntwo".into());
    let event = SerializedEvent::new("OrderPlaced.v1", vec![1, 2, 3], Some(metadata.clone()));
    bus.publish(TOPIC, &event).await.expect("a header NATS cannot carry is no reason to fail");

    let message = tokio::time::timeout(Duration::from_secs(10), raw.next()).await.unwrap().unwrap();
    let headers = message.headers.expect("headers");
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(get("cr-header-traceparent").as_deref(), Some(GOOD));
    assert_eq!(get("cr-header-tenant").as_deref(), Some("acme"));
    assert_eq!(get("cr-header-multi"), None);
    assert_eq!(get("cr-correlation-id"), None);
    // (`get` would panic on a name with `:`, which is why the bus never inserts one.)
    let names: Vec<String> = headers.iter().map(|(name, _)| name.to_string()).collect();
    assert!(!names.iter().any(|n| n.contains("bad")), "{names:?}");
    assert_eq!(get("cr-event-id"), Some(event.event_id.to_string()));

    // A consumer gets everything, from the envelope.
    let d = next_delivery(&mut delivered).await;
    assert_eq!(d.event().metadata.headers, metadata.headers);
    assert_eq!(d.event().metadata.correlation_id.as_deref(), Some("line\nbreak"));
}

#[tokio::test]
async fn a_header_the_envelope_lacks_is_read_back_and_the_envelope_wins_over_headers() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some((_server, url)) = server() else { return };
    let config = isolated_config(&url);
    let bus = bus(config.clone()).await;
    let mut delivered = bus.subscribe_with(&[TOPIC], SubscribeOptions::exclusive()).await.unwrap();
    let js = async_nats::jetstream::new(bus.raw_client().clone());
    let subject = format!("{}.{TOPIC}", config.subject_prefix());
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    // Republished by a tool that put the trace context in a NATS header only.
    let bare = SerializedEvent::new("OrderPlaced.v1", vec![1], None);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("cr-header-traceparent", GOOD);
    headers.insert("cr-header-", "an empty name is ignored");
    js.publish_with_headers(subject.clone(), headers, bare.encode().unwrap()).await.unwrap().await.unwrap();
    // The envelope says one thing, the header another: the envelope is the event.
    let mut metadata = EventMetadata::now();
    metadata.headers.insert(TRACEPARENT.into(), other.into());
    let carried = SerializedEvent::new("OrderPlaced.v1", vec![2], Some(metadata));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("cr-header-traceparent", GOOD);
    js.publish_with_headers(subject, headers, carried.encode().unwrap()).await.unwrap().await.unwrap();

    let first = next_delivery(&mut delivered).await;
    assert_eq!(first.event().event_id, bare.event_id);
    assert_eq!(first.event().metadata.headers.len(), 1, "{:?}", first.event().metadata.headers);
    assert_eq!(TraceParent::from_metadata(&first.event().metadata).map(|tp| tp.to_string()).as_deref(), Some(GOOD));
    let second = next_delivery(&mut delivered).await;
    assert_eq!(second.event().metadata.headers[TRACEPARENT], other);
}

async fn next_delivery(stream: &mut composable_rust_core::EventStream) -> composable_rust_core::Delivery {
    tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("a delivery within 10 s").expect("the stream is open").expect("a delivery")
}
