//! What a long-running saga worker keeps in memory stays bounded, also when things go wrong.
//! Virtual time (a `TestClock` drives the worker's polls and leases); real time only in bounded
//! waits for the worker's task to catch up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use composable_rust_core::{
    AppendRequest, Clock, CodecError, DeadlineChange, DeadlineOwner, Effects, EventStore, ExpectedVersion, Reducer, Saga, SagaInput, SerializedEvent,
    StoredDeadline, StreamId, smallvec,
};
use composable_rust_runtime::{DeadLetter, DeadLetterSink, Executor, RetryPolicy, SagaRunner};
use composable_rust_testing::{InMemoryEventBus, InMemoryEventStore, TestClock};
use uuid::Uuid;

/// A dead-letter sink that counts, then panics (a sink with a bug).
#[derive(Default)]
struct PanickingSink(AtomicU32);

impl DeadLetterSink for PanickingSink {
    fn record(&self, letter: DeadLetter) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("the sink failed on {}", letter.what);
    }
}

struct Bounds;

impl Reducer for Bounds {
    type State = ();
    type Action = u32;
    type Environment = ();

    fn reduce(&self, (): &mut (), _: u32, (): &()) -> Effects<u32> {
        smallvec![]
    }
}

impl Saga for Bounds {
    const NAME: &'static str = "bounds";

    fn topics(&self) -> Vec<String> {
        vec!["bounds".into()]
    }

    fn initial_state(&self, _: &str) {}

    fn decode(&self, _: &SerializedEvent) -> Result<Option<SagaInput<u32>>, CodecError> {
        Ok(None)
    }
}

/// A deadline whose handling panics (here: its action cannot be decoded, and the dead-letter sink
/// panics on the letter) used to stay in the worker's set of deadlines in hand for good: the
/// worker never queued it again when its lease ran out (it took it for still in hand), and the set
/// kept its id for the life of the process. Now it leaves the set however its handling ends, and
/// is claimed and tried again after its lease.
#[tokio::test]
async fn a_deadline_whose_handling_panics_is_not_kept_in_hand_for_good() {
    let clock = TestClock::new();
    let store = Arc::new(InMemoryEventStore::new());
    let sink = Arc::new(PanickingSink::default());
    let executor = Executor::builder()
        .store(store.clone())
        .bus(Arc::new(InMemoryEventBus::new()))
        .clock(Arc::new(clock.clone()))
        .retry(RetryPolicy::NONE)
        .dead_letters(sink.clone())
        .build();
    let garbage = StoredDeadline {
        id: Uuid::new_v4(),
        owner: DeadlineOwner::new(SagaRunner::<Bounds>::consumer(), "i-1"),
        name: "timeout".into(),
        due_at: clock.now(),
        payload: Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]),
    };
    let request = AppendRequest::new(StreamId::new("setup-1").unwrap(), ExpectedVersion::Any, vec![SerializedEvent::new("Setup.v1", vec![1], None)])
        .with_deadlines([DeadlineChange::Schedule(garbage)]);
    store.append(request).await.unwrap();

    let handle = SagaRunner::new(Bounds, (), executor).with_deadline_lease(Duration::from_secs(1)).spawn().await.unwrap();
    let mut tries = 0;
    for _ in 0..100 {
        tries = sink.0.load(Ordering::SeqCst);
        if tries >= 3 {
            break;
        }
        // Past the lease (1 s) in the worker's poll steps (100 ms), then let its task run.
        for _ in 0..11 {
            clock.advance(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown().await;
    assert!(tries >= 3, "claimed again after each lease and tried again: {tries} tries");
}
