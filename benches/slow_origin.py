#!/usr/bin/env python3
"""A deliberately slow origin and a burst client, for the collapsing measurement.

  slow_origin.py serve PORT DELAY_MS      answer every GET after DELAY_MS, count requests per path
  slow_origin.py count PORT PATH           print how many requests PATH received
  slow_origin.py burst PORT HOST PATH N    fire N concurrent GETs (one connection each), print
                                           "ok=<n> p50_ms=<..> max_ms=<..>"
  slow_origin.py ttfb PORT HOST PATH N     one GET, then (100 ms later) N concurrent ones; print
                                           the time to the first body byte and to the whole body
                                           of the first and of the others (p50, max; ms)

A path under /trickle/ is answered at once with a TRICKLE_MB (default 15) MiB body sent over
TRICKLE_MS (default 1400) ms in 10 ms steps: a large object from a distant origin.
Loopback only; standard library only.
"""
import asyncio
import statistics
import sys
import time

import os

COUNTS = {}
TRICKLE = int(os.environ.get("TRICKLE_MB", "15")) << 20
TRICKLE_MS = int(os.environ.get("TRICKLE_MS", "1400"))


async def trickle(writer):
    writer.write(
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-type: application/octet-stream\r\n"
        + b"content-length: " + str(TRICKLE).encode() + b"\r\n\r\n"
    )
    steps = max(1, TRICKLE_MS // 10)
    piece = b"x" * (TRICKLE // steps)
    sent = 0
    for i in range(steps):
        chunk = piece if i < steps - 1 else b"x" * (TRICKLE - sent)
        writer.write(chunk)
        sent += len(chunk)
        await writer.drain()
        await asyncio.sleep(0.01)


async def handle(reader, writer, delay):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode()
            _, path, _ = line.split(" ", 2)
            if path == "/__count":
                q = head.split(b"\r\n")
                want = [h for h in q if h.lower().startswith(b"x-path:")]
                p = want[0].split(b":", 1)[1].strip().decode() if want else "/"
                body = str(COUNTS.get(p, 0)).encode()
            elif path.startswith("/trickle/"):
                COUNTS[path] = COUNTS.get(path, 0) + 1
                await trickle(writer)
                if b"connection: close" in head.lower():
                    break
                continue
            else:
                COUNTS[path] = COUNTS.get(path, 0) + 1
                await asyncio.sleep(delay)
                body = b"x" * 1024
            writer.write(
                b"HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-type: application/octet-stream\r\n"
                + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
            if b"connection: close" in head.lower():
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port, delay_ms):
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, delay_ms / 1000), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


async def one(port, host, path):
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await asyncio.wait_for(reader.readexactly(length), 30)
    elapsed = (time.monotonic() - start) * 1000
    writer.close()
    return head.startswith(b"HTTP/1.1 200"), elapsed


async def burst(port, host, path, n):
    results = await asyncio.gather(*(one(port, host, path) for _ in range(n)))
    times = sorted(t for _, t in results)
    ok = sum(1 for good, _ in results if good)
    print(f"ok={ok} p50_ms={statistics.median(times):.1f} max_ms={times[-1]:.1f}")


async def send_get(port, host, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    return reader, writer, time.monotonic()


async def read_timed(reader, writer, start):
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    first = None
    total = 0
    while True:
        data = await asyncio.wait_for(reader.read(1 << 20), 30)
        if not data:
            break
        if first is None:
            first = (time.monotonic() - start) * 1000
        total += len(data)
    full = (time.monotonic() - start) * 1000
    writer.close()
    return head.startswith(b"HTTP/1.1 200"), first or full, full, total


async def ttfb(port, host, path, n):
    """One client asks first; 100 ms later (while the object is arriving) n more ask at once.
    Times count from each request's send; the n requests are all sent before any is read, so
    that this one-process client does not delay the later requests by reading the earlier."""
    leader = asyncio.ensure_future(read_timed(*await send_get(port, host, path)))
    await asyncio.sleep(0.1)
    sent = await asyncio.gather(*(send_get(port, host, path) for _ in range(n)))
    followers = await asyncio.gather(*(read_timed(*s) for s in sent))
    lead = await leader
    firsts = sorted(r[1] for r in followers) or [0.0]
    fulls = sorted(r[2] for r in followers) or [0.0]
    ok = sum(1 for r in [lead, *followers] if r[0] and r[3] == TRICKLE)
    print(
        f"ok={ok} lead_ttfb_ms={lead[1]:.1f} lead_full_ms={lead[2]:.1f} "
        f"ttfb_p50_ms={statistics.median(firsts):.1f} ttfb_max_ms={firsts[-1]:.1f} "
        f"full_p50_ms={statistics.median(fulls):.1f}"
    )


async def count(port, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /__count HTTP/1.1\r\nHost: x\r\nX-Path: {path}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read(-1)
    print(data.split(b"\r\n\r\n", 1)[1].decode().strip())


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
    elif cmd == "ttfb":
        asyncio.run(ttfb(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])))
    elif cmd == "count":
        asyncio.run(count(int(sys.argv[2]), sys.argv[3]))
    elif cmd == "burst":
        asyncio.run(burst(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])))
