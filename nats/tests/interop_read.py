"""Reads the last message of a subject from a JetStream stream with the stock nats-py client and
prints its subject, headers and payload size as JSON. Used by interop.rs."""
import asyncio
import json
import sys

import nats


async def main() -> None:
    url, stream, subject = sys.argv[1:4]
    nc = await nats.connect(url)
    try:
        msg = await nc.jetstream().get_last_msg(stream, subject)
        print(json.dumps({"subject": msg.subject, "headers": dict(msg.headers or {}), "size": len(msg.data)}))
    finally:
        await nc.close()


asyncio.run(main())
