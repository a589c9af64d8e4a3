#!/usr/bin/env bash
# HTTP/3 against HTTP/2 and HTTP/1.1 over TLS on the same meridian edge: cache hits with the same
# Rust client for every protocol (examples/h3load.rs: quinn + h3, hyper + rustls), h2load over
# HTTP/2 as a reference client, and the time to first byte of a new connection (a full
# handshake each time: 1-RTT for QUIC, TCP + TLS 1.3 for the others).
#
#   benches/h3-load.sh [ROUNDS] [SECS]       defaults: 3 rounds of 8 s per protocol and size
#   CONNS=16 STREAMS=10 benches/h3-load.sh    connections, and requests in flight on each
#   TTFB_COUNT=200 benches/h3-load.sh         new connections timed per protocol
#
# nginx serves the origin's files; a Debian nginx with `http3` (1.25 or later) would be compared
# too, but Debian 12 has 1.22, so it is not (the script says which it found). Installs nginx and
# h2load from Debian when missing (needs root). Every address is on loopback; every server started
# here is stopped on exit. Prints a markdown table of medians.
set -euo pipefail

ROUNDS=${1:-3}
SECS=${2:-8}
CONNS=${CONNS:-16}
STREAMS=${STREAMS:-10}
TTFB_COUNT=${TTFB_COUNT:-200}
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
need nginx:nginx h2load:nghttp2-client curl:curl
if nginx -V 2>&1 | grep -q http_v3_module; then
  echo "note: this nginx has http_v3_module; comparing it is not scripted yet" >&2
else
  echo "note: this nginx ($(nginx -v 2>&1 | sed 's/.*\///')) has no HTTP/3: only meridian's protocols are compared" >&2
fi

cargo build --release --quiet --bin meridian --example h3load
MERIDIAN=$ROOT/target/release/meridian
LOAD=$ROOT/target/release/examples/h3load

workdir

ORIGIN=19100
EDGE=19101
TLS=19102        # TCP (HTTPS) and UDP (QUIC) on the same port
HOST=demo.meridian.test
CA=$ROOT/config/local/tls/ca.pem
mkdir -p "$WORK/www" "$WORK/logs"
head -c 1024 /dev/urandom > "$WORK/www/1k"
head -c 102400 /dev/urandom > "$WORK/www/100k"
cp "$ROOT/config/local/tls/demo.pem" "$ROOT/config/local/tls/demo.key" "$WORK/"

cat > "$WORK/origin.conf" <<EOF
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/logs/origin-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$ORIGIN;
    location / { root $WORK/www; add_header Cache-Control "max-age=3600"; }
  }
}
EOF
nginx -c "$WORK/origin.conf"

cat > "$WORK/origins.toml" <<EOF
[[site]]
name = "bench"
hosts = ["$HOST"]
origins = ["http://127.0.0.1:$ORIGIN"]
tls_cert = "demo.pem"
tls_key = "demo.key"
EOF
cat > "$WORK/meridian.toml" <<EOF
id = "bench"
region = "local"
origin_map = "origins.toml"
[log]
level = "warn"
access_log = false
[edge]
listen = ["127.0.0.1:$EDGE"]
cache_memory = "1GiB"
max_connections = 100000
[edge.tls]
listen = ["127.0.0.1:$TLS"]
default_site = "bench"
[edge.quic]
listen = ["127.0.0.1:$TLS"]
max_concurrent_streams = 256
EOF
detached "$MERIDIAN" run -c "$WORK/meridian.toml" 2>"$WORK/logs/meridian.log"; PIDS+=($!)
for _ in $(seq 1 100); do
  curl -s -o /dev/null --cacert "$CA" --resolve "$HOST:$TLS:127.0.0.1" "https://$HOST:$TLS/1k" && break
  sleep 0.1
done
# Warm: the objects are hits from here on (the scheme is in the key: https for every protocol).
for obj in 1k 100k; do
  curl -s -o /dev/null --cacert "$CA" --resolve "$HOST:$TLS:127.0.0.1" "https://$HOST:$TLS/$obj"
  "$LOAD" ttfb h3 127.0.0.1:$TLS $HOST /$obj 1 "$CA" >/dev/null
done

OUT="$WORK/results.txt"
: > "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for obj in 1k 100k; do
    for proto in h3 h2 h1; do
      line=$("$LOAD" load $proto 127.0.0.1:$TLS $HOST /$obj "$CONNS" "$STREAMS" "$SECS" "$CA")
      echo "load $obj $proto $line" >> "$OUT"
      echo "round $round $obj $proto (h3load): $line" >&2
    done
    out=$(h2load -t2 -c"$CONNS" -m"$STREAMS" -D "$SECS" -H ":authority: $HOST" "https://127.0.0.1:$TLS/$obj" 2>&1)
    rps=$(echo "$out" | awk '/^finished in/ { gsub(",", "", $4); print $4 }')
    echo "load $obj h2load rps=$rps p50_ms=- p99_ms=- errors=-" >> "$OUT"
    echo "round $round $obj h2 (h2load): $rps req/s" >&2
  done
  for proto in h3 h2 h1; do
    line=$("$LOAD" ttfb $proto 127.0.0.1:$TLS $HOST /1k "$TTFB_COUNT" "$CA")
    echo "ttfb 1k $proto $line" >> "$OUT"
    echo "round $round ttfb $proto: $line" >&2
  done
done
RSS=$(awk '/^VmRSS/ { print $2 }' "/proc/${PIDS[0]}/status")

python3 - "$OUT" "$CONNS" "$STREAMS" "$SECS" "$ROUNDS" "$TTFB_COUNT" "$RSS" <<'EOF'
import statistics, sys
out, conns, streams, secs, rounds, count, rss = sys.argv[1:]
load, ttfb = {}, {}
for line in open(out):
    kind, obj, proto, *kv = line.split()
    d = dict(x.split("=") for x in kv)
    (load if kind == "load" else ttfb).setdefault((obj, proto), []).append(d)
med = lambda ds, k: statistics.median(float(d[k]) for d in ds) if ds and ds[0][k] != "-" else None
fmt = lambda v, f="{:,.0f}": "–" if v is None else f.format(v)
print(f"\n### Cache hits over TLS, {conns} connections x {streams} streams (HTTP/1.1: 1), {secs}s, median of {rounds} rounds\n")
print("| object | HTTP/3 (h3load) | HTTP/2 (h3load) | HTTP/1.1 (h3load) | HTTP/2 (h2load) | h3 / h2, same client |")
print("|---|---|---|---|---|---|")
for obj in ("1k", "100k"):
    r = {p: med(load.get((obj, p), []), "rps") for p in ("h3", "h2", "h1", "h2load")}
    p99 = {p: med(load.get((obj, p), []), "p99_ms") for p in ("h3", "h2", "h1")}
    cell = lambda p: f"{fmt(r[p])} req/s" + ("" if p99.get(p) is None else f", p99 {p99[p]:.2f} ms")
    ratio = f"{r['h3'] / r['h2']:.2f}x" if r["h3"] and r["h2"] else "–"
    print(f"| {obj} | {cell('h3')} | {cell('h2')} | {cell('h1')} | {fmt(r['h2load'])} req/s | {ratio} |")
print(f"\n### Time to first byte of a new connection (full handshake, no resumption), {count} in a row, median of {rounds} rounds\n")
print("| protocol | p50 | p99 |")
print("|---|---|---|")
for proto, name in (("h3", "HTTP/3 (QUIC, 1-RTT)"), ("h2", "HTTP/2 (TCP + TLS 1.3)"), ("h1", "HTTP/1.1 (TCP + TLS 1.3)")):
    ds = ttfb.get(("1k", proto), [])
    print(f"| {name} | {fmt(med(ds, 'p50_ms'), '{:.2f} ms')} | {fmt(med(ds, 'p99_ms'), '{:.2f} ms')} |")
print(f"\nmeridian RSS at the end: {int(rss) // 1024} MiB")
EOF
