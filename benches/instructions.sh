#!/usr/bin/env bash
# User-space instructions per cache hit, counted by callgrind: meridian's hit path (1 KiB and
# 100 KiB over HTTP/1.1, 1 KiB over cleartext HTTP/2) and bare hyper answering a fixed 1 KiB (the
# floor for any hit path on hyper); then per forwarded request (a GET of a 1 KiB answer the
# origin marks `private`, so every request goes to it, and a short form POST), meridian's and
# nginx's (`proxy_pass` with keep-alive upstreams and `proxy_cache` on, one worker: issue 16's
# item 3). Unlike requests/s on a shared machine, which moves by a fifth from run to run, the
# count moves by about 2% (work that runs by the clock: the store's housekeeping, hyper's date),
# so a change to the hit path can be judged alone. It counts what
# the process runs (meridian, hyper, tokio, libc), not the kernel's share.
#
#   benches/instructions.sh [REQUESTS]     default 20000 requests per row (4 connections)
#   MERIDIAN_BIN=PATH benches/instructions.sh   count another build of meridian (an A/B in one
#                                               sitting: the count drifts a little between days)
#
# Installs valgrind, nginx and h2load (nghttp2-client) from Debian if they are missing (needs
# root). Every address is on loopback; every server started here is stopped on exit. Under
# valgrind one request takes about a hundred times as long: 20,000 take about half a minute.
set -euo pipefail

REQUESTS=${1:-20000}
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
need valgrind:valgrind callgrind_annotate:valgrind nginx:nginx h2load:nghttp2-client curl:curl

cargo build --release --quiet --bin meridian --example bare_hyper
MERIDIAN=${MERIDIAN_BIN:-$ROOT/target/release/meridian}
BARE=$ROOT/target/release/examples/bare_hyper

ORIGIN=18300
P_MERIDIAN=18301
P_BARE=18304
P_NGINX=18305

workdir
mkdir -p "$WORK/www/private" "$WORK/logs" "$WORK/ngc"
head -c 1024 /dev/urandom > "$WORK/www/1k"
cp "$WORK/www/1k" "$WORK/www/private/1k"
head -c 102400 /dev/urandom > "$WORK/www/100k"
cat > "$WORK/origin.conf" <<EOF
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/logs/origin-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$ORIGIN; root $WORK/www; expires 1h;
    location /private/ { expires off; add_header Cache-Control private; }
    location = /post { return 200 "posted"; } }
}
EOF
nginx -c "$WORK/origin.conf"
cat > "$WORK/origins.toml" <<EOF
[[site]]
name = "bench"
hosts = ["bench.test"]
origins = ["http://127.0.0.1:$ORIGIN"]
EOF
cat > "$WORK/meridian.toml" <<EOF
id = "bench"
region = "local"
origin_map = "origins.toml"
[log]
level = "warn"
access_log = false
[edge]
listen = ["127.0.0.1:$P_MERIDIAN"]
cache_memory = "1GiB"
EOF

# count NAME PORT PATH H2LOAD_ARGS...: starts nothing; the server on PORT runs under callgrind
# with instrumentation off (pid in $TRACED). Warms up, counts REQUESTS requests, prints a row.
count() {
  local name=$1 port=$2 path=$3
  shift 3
  h2load "$@" -n 2000 -c 4 -H ':authority: bench.test' "http://127.0.0.1:$port$path" >/dev/null
  callgrind_control -z "$TRACED" >/dev/null 2>&1
  callgrind_control -i on "$TRACED" >/dev/null 2>&1
  local done
  done=$(h2load "$@" -n "$REQUESTS" -c 4 -H ':authority: bench.test' "http://127.0.0.1:$port$path" |
    awk '/^requests:/ {print $8}')
  callgrind_control -i off "$TRACED" >/dev/null 2>&1
  callgrind_control -d "$TRACED" >/dev/null 2>&1
  local total
  total=$(callgrind_annotate "$(ls -t "$WORK"/cg.out.* | head -1)" 2>/dev/null |
    awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  if [ "$done" != "$REQUESTS" ]; then
    echo "$name: only $done of $REQUESTS requests succeeded" >&2
    exit 1
  fi
  printf '| %s | %s |\n' "$name" "$((total / REQUESTS))"
}

# until_up PORT PATH: waits (up to a minute) until the server on PORT answers PATH.
until_up() {
  for _ in $(seq 1 120); do
    curl -s -o /dev/null -H 'Host: bench.test' "http://127.0.0.1:$1$2" && return
    sleep 0.5
  done
}

# start_traced COMMAND...: runs COMMAND under callgrind, instrumentation off until asked.
start_traced() {
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out.%p" "$@" \
    2>>"$WORK/logs/valgrind.log" &
  TRACED=$!
  PIDS+=("$TRACED")
}

echo "| hit | instructions per request |"
echo "|---|---:|"
# valgrind runs the binary it is given; `run` would start itself again outside valgrind to turn
# glibc's per-thread caches off, so they are off here from the start (the same allocator).
GLIBC_TUNABLES=glibc.malloc.tcache_count=0 start_traced "$MERIDIAN" run -c "$WORK/meridian.toml"
until_up "$P_MERIDIAN" /1k
for path in /1k /100k; do
  curl -s -o /dev/null -H 'Host: bench.test' "http://127.0.0.1:$P_MERIDIAN$path"
done
count "meridian, 1 KiB, HTTP/1.1" $P_MERIDIAN /1k --h1
count "meridian, 100 KiB, HTTP/1.1" $P_MERIDIAN /100k --h1
count "meridian, 1 KiB, HTTP/2 (h2c, 10 streams a connection)" $P_MERIDIAN /1k -m 10
kill "$TRACED"
wait "$TRACED" 2>/dev/null || true

start_traced "$BARE" 127.0.0.1:$P_BARE 1024
until_up "$P_BARE" /
count "bare hyper, fixed 1 KiB, HTTP/1.1 (the floor)" $P_BARE /1k --h1
kill "$TRACED"
wait "$TRACED" 2>/dev/null || true

echo
printf 'a=1&b=2' > "$WORK/form"
echo "| forwarded request, HTTP/1.1 | instructions per request |"
echo "|---|---:|"
GLIBC_TUNABLES=glibc.malloc.tcache_count=0 start_traced "$MERIDIAN" run -c "$WORK/meridian.toml"
until_up "$P_MERIDIAN" /private/1k
count "meridian, GET (the origin says private, 1 KiB)" $P_MERIDIAN /private/1k --h1
count "meridian, POST (7 bytes up, 6 down)" $P_MERIDIAN /post --h1 -d "$WORK/form"
kill "$TRACED"
wait "$TRACED" 2>/dev/null || true

# nginx in the foreground as one process (callgrind follows no children).
cat > "$WORK/proxy.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $WORK/proxy.pid;
error_log $WORK/logs/proxy-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  proxy_cache_path $WORK/ngc levels=1:2 keys_zone=bench:8m max_size=64m use_temp_path=off;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
  server {
    listen 127.0.0.1:$P_NGINX;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
    }
  }
}
EOF
start_traced nginx -c "$WORK/proxy.conf"
until_up "$P_NGINX" /private/1k
count "nginx proxy_pass, GET" $P_NGINX /private/1k --h1
count "nginx proxy_pass, POST" $P_NGINX /post --h1 -d "$WORK/form"
