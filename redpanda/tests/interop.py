"""A stock Kafka client (confluent-kafka, librdkafka 2.x) against the bus's topics.

read BROKERS TOPIC: prints the first message of partition 0 as JSON (key, payload, headers).
write BROKERS TOPIC: produces one message with cr-* headers, as a non-Rust service would.
"""
import json
import sys

from confluent_kafka import Consumer, Producer, TopicPartition

mode, brokers, topic = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "read":
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "python-interop", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    msg = None
    for _ in range(60):
        msg = consumer.poll(1.0)
        if msg is not None and msg.error() is None:
            break
    if msg is None or msg.error() is not None:
        sys.exit(f"no message on {topic}: {msg.error() if msg else 'timeout'}")
    headers = {k: v.decode() for k, v in (msg.headers() or [])}
    print(json.dumps({"key": msg.key().decode(), "payload": msg.value().decode(), "headers": headers}))
    consumer.close()
else:
    producer = Producer({"bootstrap.servers": brokers})
    headers = [("cr-event-type", b"InvoiceIssued.v1"), ("cr-event-id", b"2b3c4d5e-0000-4000-8000-000000000001"), ("cr-correlation-id", b"order-9")]
    producer.produce(topic, key=b"invoice-1", value=b'{"amount":12}', headers=headers)
    if producer.flush(30) != 0:
        sys.exit("message not delivered")
