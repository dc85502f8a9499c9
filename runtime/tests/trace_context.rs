//! W3C trace context across the in-memory bus, in one process: a command's span, the saga steps
//! its events cause and the follow-up commands share one trace id (`otel` feature; spans exported
//! to OpenTelemetry's in-memory exporter through the tracing-opentelemetry layer).
//!
//! Each test installs its subscriber for its own thread and runs on a current-thread runtime, so
//! the spans of tests running in parallel never mix.

#![cfg(feature = "otel")]

mod observability_support;

use std::future::Future;

use composable_rust_core::event_headers::TRACEPARENT;
use composable_rust_core::event_store::read_stream_to_end;
use composable_rust_core::{Effect, EventBus, EventMetadata, ExpectedVersion, SerializedEvent, StreamId, Version};
use composable_rust_runtime::trace_context::{self, TraceParent};
use composable_rust_runtime::{AggregateHandler, ExecutionScope, Feedback};
use observability_support::{Order, Shop, TOPIC, eventually, placed};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Runs `test` with spans exported to an in-memory exporter; returns the finished spans.
fn traced<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> Vec<SpanData> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tracing::subscriber::with_default(subscriber, || rt.block_on(test()));
    drop(rt);
    provider.force_flush().unwrap();
    exporter.get_finished_spans().unwrap()
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn trace_of(tp: TraceParent) -> TraceId {
    TraceId::from_bytes(tp.trace_id())
}

/// The trace ids of the stored events of `id`'s order stream.
async fn stored_traces(shop: &Shop, id: &str) -> Vec<Option<TraceId>> {
    let stream = AggregateHandler::<Order>::stream_id(id).unwrap();
    let events = read_stream_to_end(&*shop.store, &stream, Version(1)).await.unwrap();
    events.iter().map(|e| TraceParent::from_metadata(&e.metadata).map(trace_of)).collect()
}

#[test]
fn one_trace_from_the_command_through_the_saga_steps_and_the_follow_up_command() {
    let mut root_trace = None;
    let mut stored = Vec::new();
    let spans = traced(|| async {
        let shop = Shop::new();
        // The worker's own span is a trace of its own, started outside the checkout.
        let worker = shop.spawn_shipping().await;
        let checkout = tracing::info_span!("checkout");
        root_trace = async {
            shop.place("o-1").await;
            trace_context::current()
        }
        .instrument(checkout)
        .await;
        eventually("both saga steps", || worker.stats().applied == 2).await;
        worker.shutdown().await;
        stored = stored_traces(&shop, "o-1").await;
    });
    let trace = trace_of(root_trace.expect("the checkout span has an OpenTelemetry context"));

    let checkout = named(&spans, "checkout");
    assert_eq!(checkout.len(), 1);
    assert_eq!(checkout[0].span_context.trace_id(), trace);
    // The placing command and the shipping command the saga dispatched.
    let commands = named(&spans, "command");
    assert_eq!(commands.len(), 2, "{commands:?}");
    let steps = named(&spans, "saga_step");
    assert_eq!(steps.len(), 2, "one step for OrderPlaced, one for OrderShipped");
    for span in commands.iter().chain(&steps) {
        assert_eq!(span.span_context.trace_id(), trace, "{} is in another trace", span.name);
    }
    // Each step is the child of the effect that appended (and published) its event.
    for step in &steps {
        let parent = spans.iter().find(|s| s.span_context.span_id() == step.parent_span_id).expect("the step's parent span was exported");
        assert_eq!(parent.name, "effect");
        assert!(parent.attributes.iter().any(|kv| kv.key.as_str() == "kind" && kv.value.as_str() == "append"), "{parent:?}");
    }
    // The stored events carry the trace too (a store-fed consumer continues it).
    assert_eq!(stored, [Some(trace), Some(trace)]);
    // The worker span is not the steps' trace: they continue the command's instead.
    let worker = named(&spans, "saga");
    assert_eq!(worker.len(), 1);
    assert_ne!(worker[0].span_context.trace_id(), trace);
}

#[test]
fn a_step_without_a_valid_traceparent_starts_a_trace_of_its_own() {
    let spans = traced(|| async {
        let shop = Shop::new();
        let worker = shop.spawn_shipping().await;
        // Published by hand outside any span: no traceparent; then one with a malformed one.
        shop.bus.publish(TOPIC, &placed("o-1")).await.unwrap();
        let mut bad = placed("o-2");
        bad.metadata.headers.insert(TRACEPARENT.into(), "00-not-a-trace-01".into());
        shop.bus.publish(TOPIC, &bad).await.unwrap();
        eventually("the two placements", || worker.stats().applied >= 2).await;
        worker.shutdown().await;
    });
    let worker = named(&spans, "saga")[0].span_context.trace_id();
    let placements: Vec<_> = named(&spans, "saga_step")
        .into_iter()
        .filter(|s| s.attributes.iter().any(|kv| kv.key.as_str() == "event_type" && kv.value.as_str() == "OrderPlaced.v1"))
        .collect();
    assert_eq!(placements.len(), 2);
    for step in &placements {
        assert_ne!(step.span_context.trace_id(), worker, "a step joined the worker's trace");
        assert_eq!(step.parent_span_id, SpanId::INVALID, "a root span");
    }
    assert_ne!(placements[0].span_context.trace_id(), placements[1].span_context.trace_id());
}

#[test]
fn an_event_that_carries_a_traceparent_keeps_it() {
    let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut stored = Vec::new();
    let spans = traced(|| async {
        let shop = Shop::new();
        let mut metadata = EventMetadata::now();
        metadata.headers.insert(TRACEPARENT.into(), theirs.into());
        let stream = StreamId::new("note-1").unwrap();
        let events = vec![SerializedEvent::new("Noted.v1", vec![1], Some(metadata)), SerializedEvent::new("Noted.v1", vec![2], None)];
        let append = Effect::<()>::append(stream.clone(), ExpectedVersion::NoStream, events);
        let feedback: Feedback<()> = std::sync::Arc::new(|_, ()| {});
        let scope = ExecutionScope::default();
        shop.executor.run(vec![append.into()], &feedback, &scope).instrument(tracing::info_span!("writer")).await.unwrap();
        stored = read_stream_to_end(&*shop.store, &stream, Version(1)).await.unwrap();
    });
    let writer = named(&spans, "writer")[0].span_context.trace_id();
    assert_eq!(stored[0].metadata.headers[TRACEPARENT], theirs, "kept as built");
    let injected = TraceParent::from_metadata(&stored[1].metadata).expect("the other event gets the current span's");
    assert_eq!(trace_of(injected), writer);
    let effect = named(&spans, "effect")[0];
    assert_eq!(injected.parent_id(), effect.span_context.span_id().to_bytes(), "the parent is the append effect's span");
}

#[test]
fn without_an_opentelemetry_layer_nothing_is_injected_and_everything_works() {
    let subscriber = tracing_subscriber::registry();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stored = tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let shop = Shop::new();
            let worker = shop.spawn_shipping().await;
            async {
                assert_eq!(trace_context::current(), None);
                shop.place("o-1").await;
            }
            .instrument(tracing::info_span!("checkout"))
            .await;
            eventually("both saga steps", || worker.stats().applied == 2).await;
            worker.shutdown().await;
            stored_traces(&shop, "o-1").await
        })
    });
    assert_eq!(stored, [None, None]);
}
