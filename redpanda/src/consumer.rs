//! One subscription: a librdkafka consumer in a group, whose deliveries are committed only once
//! acknowledged, in partition order.

use std::collections::VecDeque;
use std::sync::Arc;

use composable_rust_core::dead_letter::{DeadLetter, DeadLetterSink};
use composable_rust_core::event_bus::BusCause;
use composable_rust_core::{BusMessage, Delivery, DeliveryAck, EventBusError, Topic, event_headers};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::offsets::{OffsetTracker, PartitionKey};

/// Namespace of the ids given to messages that carry no `cr-event-id` (v5 of topic/partition/offset),
/// so a redelivered foreign message keeps its id and consumers can de-duplicate it.
const FOREIGN_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_3c2e_9a44_4d0b_8e57_0c9b_2f1d_aa01);

/// Shared by the consumer's rebalance callbacks and the acknowledgement handles.
pub(crate) struct MemberState {
    pub(crate) tracker: Mutex<OffsetTracker>,
    redeliveries: Mutex<VecDeque<(Arc<BusMessage>, u32, Position)>>,
    redelivery: Notify,
    group: String,
}

impl MemberState {
    pub(crate) fn new(group: String) -> Self {
        Self { tracker: Mutex::default(), redeliveries: Mutex::default(), redelivery: Notify::new(), group }
    }
}

/// The rebalance hooks: forget revoked partitions (librdkafka commits their stored offsets first,
/// because auto-commit is on).
pub(crate) struct MemberContext {
    pub(crate) state: Arc<MemberState>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked: Vec<PartitionKey> = tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
            let in_flight = self.state.tracker.lock().in_flight();
            tracing::info!(group = %self.state.group, ?revoked, in_flight, "kafka partitions revoked; acknowledged offsets are committed, the rest will be redelivered");
            self.state.tracker.lock().revoked(&revoked);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let assigned: Vec<PartitionKey> = tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
            tracing::info!(group = %self.state.group, ?assigned, "kafka partitions assigned");
        }
    }
}

pub(crate) type MemberConsumer = StreamConsumer<MemberContext>;

#[derive(Debug, Clone)]
struct Position {
    topic: String,
    partition: i32,
    offset: i64,
    generation: u64,
}

/// Acknowledges one delivery: stores the committable offset, or queues a redelivery.
struct KafkaAck {
    consumer: Arc<MemberConsumer>,
    state: Arc<MemberState>,
    message: Arc<BusMessage>,
    attempt: u32,
    position: Position,
}

fn store(consumer: &MemberConsumer, state: &MemberState, p: &Position) -> Result<(), EventBusError> {
    let Some(next) = state.tracker.lock().acked(&p.topic, p.partition, p.offset, p.generation) else {
        tracing::trace!(group = %state.group, topic = %p.topic, partition = p.partition, offset = p.offset, generation = p.generation, "acked; committable offset unchanged");
        return Ok(());
    };
    tracing::trace!(group = %state.group, topic = %p.topic, partition = p.partition, offset = p.offset, generation = p.generation, next, "acked; storing");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(next))
        .map_err(|e| EventBusError::ack_failed(BusCause::context(format!("cannot store offset {next} of {}/{}", p.topic, p.partition), e)))?;
    if let Err(e) = consumer.store_offsets(&tpl) {
        // The partition went to another member in between: it will deliver the message again, which
        // at-least-once allows; nothing to commit here.
        tracing::debug!(topic = %p.topic, partition = p.partition, offset = p.offset, error = %e, "offset not stored: partition no longer assigned");
    }
    Ok(())
}

impl DeliveryAck for KafkaAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), EventBusError>> {
        let result = store(&self.consumer, &self.state, &self.position);
        async move { result }.boxed()
    }

    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<(), EventBusError>> {
        // Kafka has no per-message redelivery: the message comes again from this member's queue, and
        // its offset stays uncommitted, so a crash before it is handled delivers it again after restart.
        self.state.redeliveries.lock().push_back((self.message, self.attempt + 1, self.position));
        self.state.redelivery.notify_one();
        async { Ok(()) }.boxed()
    }
}

/// Builds the event from a Kafka message: payload as data, metadata from `cr-*` headers.
fn decode(message: &BorrowedMessage<'_>) -> Result<Arc<BusMessage>, EventBusError> {
    let decode_err = |source| EventBusError::Decode { topic: message.topic().to_owned(), source };
    let topic = Topic::new(message.topic())
        .map_err(|e| decode_err(composable_rust_core::CodecError::Malformed { what: "kafka topic".into(), reason: e.to_string() }))?;
    let headers = message.headers().into_iter().flat_map(|h| h.iter()).filter_map(|h| h.value.map(|v| (h.key, v)));
    let data = bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default());
    let fallback = || Uuid::new_v5(&FOREIGN_ID_NAMESPACE, format!("{}/{}/{}", message.topic(), message.partition(), message.offset()).as_bytes());
    let event = event_headers::from_headers("kafka message headers", headers, data, fallback).map_err(decode_err)?;
    Ok(Arc::new(BusMessage { topic, event }))
}

/// The member's stream of deliveries.
pub(crate) fn member_stream(
    consumer: Arc<MemberConsumer>,
    state: Arc<MemberState>,
    dead_letters: Arc<dyn DeadLetterSink>,
) -> composable_rust_core::EventStream {
    futures::stream::unfold((consumer, state, dead_letters), |(consumer, state, dead_letters)| async move {
        let item = next_item(&consumer, &state, &dead_letters).await;
        Some((item, (consumer, state, dead_letters)))
    })
    .boxed()
}

async fn next_item(consumer: &Arc<MemberConsumer>, state: &Arc<MemberState>, dead_letters: &Arc<dyn DeadLetterSink>) -> Result<Delivery, EventBusError> {
    loop {
        let redelivery = state.redeliveries.lock().pop_front();
        if let Some((message, attempt, position)) = redelivery {
            let ack = KafkaAck { consumer: Arc::clone(consumer), state: Arc::clone(state), message: Arc::clone(&message), attempt, position };
            return Ok(Delivery::with_ack(message, attempt, Box::new(ack)));
        }
        let notified = state.redelivery.notified();
        // Both branches are cancel-safe: a message is taken off librdkafka's queue only when ready.
        let received = tokio::select! {
            received = consumer.recv() => received,
            () = notified => continue,
        };
        let message = match received {
            Ok(m) => m,
            // A pattern that matches no topic yet, or a topic still being created: librdkafka keeps
            // watching the metadata, there is nothing for the consumer to do.
            Err(rdkafka::error::KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                tracing::debug!(group = %state.group, "subscribed topic not available yet");
                continue;
            }
            Err(e) => {
                tracing::warn!(group = %state.group, error = %e, "kafka consumer error");
                return Err(EventBusError::unavailable(e));
            }
        };
        let generation = state.tracker.lock().delivered(message.topic(), message.partition(), message.offset());
        tracing::trace!(group = %state.group, topic = message.topic(), partition = message.partition(), offset = message.offset(), generation, "delivered");
        let position = Position { topic: message.topic().to_owned(), partition: message.partition(), offset: message.offset(), generation };
        match decode(&message) {
            Ok(bus_message) => {
                let ack = KafkaAck { consumer: Arc::clone(consumer), state: Arc::clone(state), message: Arc::clone(&bus_message), attempt: 1, position };
                return Ok(Delivery::with_ack(bus_message, 1, Box::new(ack)));
            }
            Err(e) => {
                // Acknowledged past: it would fail the same way every time it came back.
                tracing::warn!(topic = %position.topic, partition = position.partition, offset = position.offset, error = %e, "undecodable kafka message dead-lettered");
                let what = format!("kafka message {}/{}@{}", position.topic, position.partition, position.offset);
                dead_letters.record(DeadLetter::now(what, e.to_string(), 1, None));
                store(consumer, state, &position)?;
                return Err(e);
            }
        }
    }
}
