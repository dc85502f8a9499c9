//! Sends the runtime's spans to an OpenTelemetry collector over OTLP (HTTP/protobuf): a command, the
//! saga step its event causes and the command the saga answers with show up as one trace.
//!
//! ```sh
//! # a collector (or Jaeger, Tempo, ...) listening for OTLP/HTTP on localhost:4318, then:
//! cargo run -p composable-rust --features otel --example otlp
//! # elsewhere: OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 cargo run ...
//! ```
//!
//! Without a collector the program runs all the same (the exporter fails to send, quietly). The
//! part to copy is `main`; the shop below it is a minimal aggregate and saga.

use std::sync::Arc;
use std::time::Duration;

use composable_rust::memory::{InMemoryEventBus, InMemoryEventStore};
use composable_rust::runtime::{AggregateHandler, Executor, SagaRunner, trace_context};
use composable_rust::{Aggregate, CodecError, DomainEvent, Effect, Effects, Reducer, Saga, SagaInput, SerializedEvent, Topic, smallvec};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The exporter: OTLP over HTTP/protobuf, to http://localhost:4318/v1/traces unless
    //    OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) says otherwise.
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    // 2. A tracer provider exporting in batches from a thread of its own.
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(Resource::builder().with_service_name("shop").build()).build();
    // 3. The tracing-opentelemetry layer beside the usual log output: every `tracing` span the
    //    runtime opens (`command`, `effect`, `saga_step`, ...) becomes an OpenTelemetry span. Each
    //    layer has its own filter, so `RUST_LOG=warn` quiets the logs without cutting the traces.
    let logs = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_filter(logs))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("shop")).with_filter(LevelFilter::INFO))
        .init();

    let runtime = tokio::runtime::Runtime::new()?;
    let trace_id = runtime.block_on(checkout())?;
    println!("trace {trace_id}: look it up in your trace viewer");
    // 4. Export what is still batched before the process exits.
    provider.shutdown()?;
    Ok(())
}

/// Places one order in a span of its own and waits until the saga shipped it; returns the trace id.
async fn checkout() -> Result<String, Box<dyn std::error::Error>> {
    let store = Arc::new(InMemoryEventStore::new());
    let bus = Arc::new(InMemoryEventBus::new());
    let executor = Executor::builder().store(store).bus(bus).build();
    let orders = AggregateHandler::new(Order, (), executor.clone()).register()?;
    let worker = SagaRunner::new(Shipping, (), executor).spawn().await?;
    let trace = async {
        orders.send(OrderCommand::Place("order-1".into())).await?;
        Ok::<_, Box<dyn std::error::Error>>(trace_context::current().map_or_else(|| "(none)".to_owned(), |tp| tp.trace_id_hex()))
    }
    .instrument(tracing::info_span!("checkout"))
    .await?;
    // OrderPlaced, then OrderShipped: two steps.
    for _ in 0..500 {
        if worker.stats().applied >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.shutdown().await;
    Ok(trace)
}

#[derive(Debug, Clone, PartialEq)]
enum OrderCommand {
    Place(String),
    Ship(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum OrderEvent {
    Placed(String),
    Shipped(String),
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrderEvent::Placed(_) => "OrderPlaced.v1",
            OrderEvent::Shipped(_) => "OrderShipped.v1",
        }
    }
}

struct Order;

impl Aggregate for Order {
    const AGGREGATE_TYPE: &'static str = "order";
    type State = ();
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = std::convert::Infallible;
    type Environment = ();

    fn aggregate_id(command: &OrderCommand) -> &str {
        match command {
            OrderCommand::Place(id) | OrderCommand::Ship(id) => id,
        }
    }

    fn initial_state(_id: &str) {}

    fn handle(&self, (): &(), command: OrderCommand, (): &()) -> Result<Vec<OrderEvent>, Self::Error> {
        Ok(vec![match command {
            OrderCommand::Place(id) => OrderEvent::Placed(id),
            OrderCommand::Ship(id) => OrderEvent::Shipped(id),
        }])
    }

    fn apply((): &mut (), _event: &OrderEvent) {}

    fn topic() -> Option<Topic> {
        Topic::new("shop.orders").ok()
    }
}

/// Ships every placed order.
struct Shipping;

impl Reducer for Shipping {
    type State = ();
    type Action = OrderEvent;
    type Environment = ();

    fn reduce(&self, (): &mut (), event: OrderEvent, (): &()) -> Effects<OrderEvent> {
        match event {
            OrderEvent::Placed(id) => smallvec![Effect::dispatch(OrderCommand::Ship(id))],
            OrderEvent::Shipped(_) => smallvec![],
        }
    }
}

impl Saga for Shipping {
    const NAME: &'static str = "shipping";

    fn topics(&self) -> Vec<String> {
        vec!["shop.orders".into()]
    }

    fn initial_state(&self, _instance_id: &str) {}

    fn decode(&self, event: &SerializedEvent) -> Result<Option<SagaInput<OrderEvent>>, CodecError> {
        let event: OrderEvent = event.decode_data()?;
        let (OrderEvent::Placed(id) | OrderEvent::Shipped(id)) = &event;
        Ok(Some(SagaInput { instance_id: id.clone(), action: event }))
    }
}
