#!/usr/bin/env python3
"""A deliberately slow origin and a burst client, for the collapsing measurement.

  slow_origin.py serve PORT DELAY_MS      answer every GET after DELAY_MS, count requests per path
  slow_origin.py count PORT PATH           print how many requests PATH received
  slow_origin.py burst PORT HOST PATH N    fire N concurrent GETs (one connection each), print
                                           "ok=<n> p50_ms=<..> max_ms=<..>"
Loopback only; standard library only.
"""
import asyncio
import statistics
import sys
import time

COUNTS = {}


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


async def count(port, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /__count HTTP/1.1\r\nHost: x\r\nX-Path: {path}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read(-1)
    print(data.split(b"\r\n\r\n", 1)[1].decode().strip())


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
    elif cmd == "count":
        asyncio.run(count(int(sys.argv[2]), sys.argv[3]))
    elif cmd == "burst":
        asyncio.run(burst(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])))
