"""bench/run's broadcast scenarios for uvicorn and granian: the /loop half of
apps/broadcast.pl as an ASGI app. It keeps its connections' send callables
in a dict and loops over them, awaiting each send, before it answers the
publish request. The same routes and bytes:

  GET  /                  200 text/plain "broadcast\\n"
  GET  /loop/check        200 text/plain "loop\\n"
  WebSocket /loop/ws      accept, then the text message "ready"
  GET  /loop/sse          an event stream (Accept: text/event-stream): "data: ready"
  POST /loop/publish/ws   the body (ASCII text) to every WebSocket client
  POST /loop/publish/sse  the body as the data of one event to every SSE client

A publish answers 200 text/plain with the number of clients it went to.
"""
import itertools

conns = {"ws": {}, "sse": {}}  # kind -> {id: send}
ids = itertools.count(1)


async def respond(send, status, body):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive):
    parts = []
    while True:
        ev = await receive()
        if ev["type"] != "http.request":
            break
        parts.append(ev.get("body", b""))
        if not ev.get("more_body"):
            break
    return b"".join(parts)


async def sse(receive, send):
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
    await send({"type": "http.response.body", "body": b"data: ready\n\n", "more_body": True})
    cid = next(ids)
    conns["sse"][cid] = send
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        conns["sse"].pop(cid, None)


async def http(scope, receive, send):
    method, path = scope["method"], scope["path"]
    if path == "/":
        return await respond(send, 200, b"broadcast\n")
    if path == "/loop/check":
        return await respond(send, 200, b"loop\n")
    if path == "/loop/sse":
        return await sse(receive, send)
    if method == "POST" and path in ("/loop/publish/ws", "/loop/publish/sse"):
        body = await read_body(receive)
        if path.endswith("/ws"):
            sends, event = list(conns["ws"].values()), {"type": "websocket.send", "text": body.decode("ascii")}
        else:
            sends, event = list(conns["sse"].values()), {"type": "http.response.body", "body": b"data: " + body + b"\n\n",
                                                        "more_body": True}
        for s in sends:
            try:
                await s(event)
            except Exception:
                pass  # a client that went away meanwhile
        return await respond(send, 200, b"%d\n" % len(sends))
    return await respond(send, 404, b"Not Found\n")


async def websocket(scope, receive, send):
    await receive()  # websocket.connect
    if scope["path"] != "/loop/ws":
        return await send({"type": "websocket.close", "code": 4004})
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "ready"})
    cid = next(ids)
    conns["ws"][cid] = send
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
    finally:
        conns["ws"].pop(cid, None)


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
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
