"""bench/run: the routes of apps/suite.pl as one ASGI app, for uvicorn and
granian. Same status, content type and body bytes; each send awaited. The
SSE hub is the closed loop of apps/sse-fanout.pl: a batch of events goes to
every subscriber, the next batch once every subscriber has sent the whole
batch."""
import asyncio
import json
import os
import re
from collections import deque

BLOB_64K = b"x" * 65536
CHUNK = b"d" * 65536
DOWNLOAD = 1073741824
BATCH = int(os.environ.get("SSE_FANOUT_BATCH") or 50)
PAYLOAD = b"x" * 64


async def respond(send, ctype, body, status=200):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive, count_only=False):
    parts, count = [], 0
    while True:
        ev = await receive()
        if ev["type"] != "http.request":
            break
        chunk = ev.get("body", b"")
        count += len(chunk)
        if not count_only:
            parts.append(chunk)
        if not ev.get("more_body"):
            break
    return count if count_only else b"".join(parts)


async def http(scope, receive, send):
    method, path = scope["method"], scope["path"]
    if path == "/sse":
        return await sse(scope, receive, send)
    if path == "/":
        return await respond(send, b"text/plain", b"Hello, World!\n")
    if path == "/json":
        body = json.dumps({"message": "Hello, World!"}, separators=(",", ":")).encode()
        return await respond(send, b"application/json", body)
    if path == "/64k":
        return await respond(send, b"application/octet-stream", BLOB_64K)
    if path == "/echo" and method == "POST":
        return await respond(send, b"application/octet-stream", await read_body(receive))
    if path == "/upload" and method == "POST":
        count = await read_body(receive, count_only=True)
        return await respond(send, b"text/plain", b"%d" % count)
    if path == "/download":
        # ?bytes=N (a multiple of 64 KiB) shortens it, for bench/run --quick.
        m = re.search(rb"\bbytes=(\d+)", scope.get("query_string", b""))
        size = int(m.group(1)) if m else DOWNLOAD
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", b"%d" % size)]})
        for _ in range(size // len(CHUNK)):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        return await send({"type": "http.response.body", "body": b""})
    return await respond(send, b"text/plain", b"Not Found\n", status=404)


async def websocket(scope, receive, send):
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        ev = await receive()
        if ev["type"] == "websocket.disconnect":
            return
        if ev.get("text") is not None:
            await send({"type": "websocket.send", "text": ev["text"]})
        else:
            await send({"type": "websocket.send", "bytes": ev["bytes"]})


# --- SSE hub ----------------------------------------------------------------
class Hub:
    def __init__(self):
        self.subscribers = set()
        self.seq = 0          # id of the last event published
        self.outstanding = 0  # subscriber-batches still being sent
        self.publish_queued = False

    def publish_batch(self):
        if self.outstanding or not self.subscribers:
            return
        batch = (self.seq + 1, self.seq + BATCH)
        self.seq += BATCH
        for sub in self.subscribers:
            sub.queue.append(batch)
            sub.owed += 1
            self.outstanding += 1
            sub.wake.set()

    def settle(self, sub, n):
        sub.owed -= n
        self.outstanding -= n
        if self.outstanding == 0:
            self.schedule_publish()

    def schedule_publish(self):
        # Batches start from the loop, one queued at most, as in suite.pl.
        if self.publish_queued:
            return
        self.publish_queued = True
        asyncio.get_running_loop().call_soon(self._publish_now)

    def _publish_now(self):
        self.publish_queued = False
        self.publish_batch()


class Subscriber:
    def __init__(self):
        self.queue = deque()
        self.owed = 0
        self.wake = asyncio.Event()


HUB = Hub()


async def wait_disconnect(receive):
    while True:
        ev = await receive()
        if ev["type"] == "http.disconnect":
            return


async def sse(scope, receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
    sub = Subscriber()
    gone = asyncio.ensure_future(wait_disconnect(receive))
    HUB.subscribers.add(sub)
    HUB.schedule_publish()
    try:
        while not gone.done():
            if sub.queue:
                first, last = sub.queue.popleft()
                for i in range(first, last + 1):
                    await send({"type": "http.response.body", "more_body": True,
                                "body": b"event: tick\ndata: " + PAYLOAD + b"\nid: %d\n\n" % i})
                    if gone.done():
                        break
                if not gone.done():
                    HUB.settle(sub, 1)
                continue
            sub.wake.clear()
            waker = asyncio.ensure_future(sub.wake.wait())
            await asyncio.wait([waker, gone], return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
    except OSError:
        pass  # the client went away mid-send
    finally:
        HUB.subscribers.discard(sub)
        if sub.owed:
            HUB.settle(sub, sub.owed)
        gone.cancel()


async def app(scope, receive, send):
    if scope["type"] == "http":
        return await http(scope, receive, send)
    if scope["type"] == "websocket":
        return await websocket(scope, receive, send)
    if scope["type"] == "lifespan":
        while True:
            ev = await receive()
            if ev["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif ev["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
