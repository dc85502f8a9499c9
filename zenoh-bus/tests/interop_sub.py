"""A stock Zenoh client (eclipse-zenoh): connects to ENDPOINT, subscribes to KEY_EXPR and prints one
JSON line per sample with its key, payload and attachment decoded as a map of strings."""
import json
import sys
import time

import zenoh
from zenoh.ext import z_deserialize

endpoint, key_expr = sys.argv[1], sys.argv[2]
config = zenoh.Config()
config.insert_json5("mode", '"peer"')
config.insert_json5("connect/endpoints", json.dumps([endpoint]))
config.insert_json5("scouting/multicast/enabled", "false")


def on_sample(sample):
    attachment = z_deserialize(dict[str, str], sample.attachment) if sample.attachment is not None else None
    line = {"key": str(sample.key_expr), "payload": sample.payload.to_bytes().decode("utf-8", "replace"), "attachment": attachment}
    print(json.dumps(line), flush=True)


with zenoh.open(config) as session:
    session.declare_subscriber(key_expr, on_sample)
    time.sleep(60)
