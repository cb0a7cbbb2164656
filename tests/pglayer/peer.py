"""A separate process using the channel layer, driven by JSON lines on stdin (for multi-process tests).

Commands (one JSON object per line), each answered by one JSON line on stdout:
- ``{"op": "channels", "n": 5, "group": "g"}``: make n channels (added to group g if given).
- ``{"op": "listen"}``: start the layer's listener (a short receive on a channel of its own).
- ``{"op": "receive", "channels": [...], "count": n, "quiet": 0.5}``: receive n messages on each
  channel, then keep receiving ``quiet`` seconds more to catch duplicates; answers everything received.
- ``{"op": "send", "channel": c, "messages": [...]}`` and ``{"op": "group_send", "group": g, "messages": [...]}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any


async def main() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "iacplatform.settings")
    django.setup()
    from apps.pglayer.core import PostgresChannelLayer

    layer = PostgresChannelLayer(prefix=os.environ["PGLAYER_TEST_PREFIX"])
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        answer = await handle(layer, command)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    await layer.close()


async def handle(layer: Any, command: dict[str, Any]) -> dict[str, Any]:
    op = command["op"]
    if op == "channels":
        channels = [await layer.new_channel() for _ in range(command["n"])]
        for channel in channels:
            if command.get("group"):
                await layer.group_add(command["group"], channel)
        return {"channels": channels}
    if op == "listen":
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(layer.receive(await layer.new_channel()), 0.2)
        return {"listening": layer.stats()["listener_connections"]}
    if op == "receive":
        got: dict[str, list[Any]] = {channel: [] for channel in command["channels"]}
        complete = asyncio.Event()

        async def drain(channel: str) -> None:
            while True:
                got[channel].append(await layer.receive(channel))
                if all(len(v) >= command["count"] for v in got.values()):
                    complete.set()

        tasks = [asyncio.ensure_future(drain(channel)) for channel in command["channels"]]
        if command["count"] == 0:
            complete.set()  # only the quiet period: anything arriving is unexpected
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(complete.wait(), command.get("timeout", 30))
        await asyncio.sleep(command.get("quiet", 0.5))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"received": got, "stats": layer.stats()}
    if op == "send":
        for message in command["messages"]:
            await layer.send(command["channel"], message)
        return {"sent": len(command["messages"])}
    if op == "group_send":
        for message in command["messages"]:
            await layer.group_send(command["group"], message)
        return {"sent": len(command["messages"])}
    return {"error": "unknown op %r" % op}


if __name__ == "__main__":
    asyncio.run(main())
