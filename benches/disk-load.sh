#!/usr/bin/env bash
# The disk tier with a working set larger than memory: OBJECTS objects of 100 KiB (by default 4 x
# CACHE bytes) asked for with a Zipf-like popularity (exponent ZIPF), through meridian
# (cache_memory = CACHE, cache_disk = DISK) and through nginx proxy_cache (files on disk, the
# same origin). Reports req/s and hit ratio of each (hit ratio = 1 - origin requests / client
# requests, counted in the origin's access log), meridian's hits per tier and its RSS; the hit
# rate of a small hot set from memory with and without a disk tier configured (the memory tier
# must not get slower); and the hit ratio in the first RESTART seconds after a restart, with
# the disk tier and without (memory-only starts cold).
#
#   benches/disk-load.sh                     CACHE=128MiB DISK=1GiB, 20 s warm-up, 20 s runs
#   CACHE=512MiB DISK=4GiB OBJECTS=20971 WARM=60 RUN=30 RESTART=60 benches/disk-load.sh
#
# Needs nginx and wrk from Debian (installed if missing, as root). Loopback only; every process
# started here is stopped on exit. Prints markdown tables.
set -euo pipefail

CACHE=${CACHE:-128MiB}
DISK=${DISK:-1GiB}
WARM=${WARM:-20}
RUN=${RUN:-20}
RESTART=${RESTART:-20}
ZIPF=${ZIPF:-0.9}
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
need nginx:nginx wrk:wrk curl:curl
cargo build --release --quiet --bin meridian
MERIDIAN=$ROOT/target/release/meridian

CACHE_BYTES=$(bytes "$CACHE")
OBJECTS=${OBJECTS:-$((CACHE_BYTES * 4 / 102400))}

workdir

ORIGIN=18200
EDGE=18201
ADMIN=18202
NGINX=18203

mkdir -p "$WORK/www" "$WORK/logs" "$WORK/nginx-cache"
head -c 102400 /dev/urandom > "$WORK/www/100k"
cat > "$WORK/origin.conf" <<CONF
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/logs/origin-error.log warn;
events { worker_connections 4096; }
http {
  access_log $WORK/logs/origin-access.log;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$ORIGIN;
    root $WORK/www;
    location /o/ { try_files /100k =404; expires 1d; }
    location = /healthz { access_log off; return 200; }
  }
}
CONF
nginx -c "$WORK/origin.conf" -e "$WORK/logs/origin-error.log"
origin_requests() { wc -l < "$WORK/logs/origin-access.log"; }

cat > "$WORK/cache.conf" <<CONF
worker_processes 2;
pid $WORK/cache.pid;
error_log $WORK/logs/cache-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=bench:64m max_size=$(( $(bytes "$DISK") >> 20 ))m inactive=1d use_temp_path=off;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_lock on;
    }
  }
}
CONF
nginx -c "$WORK/cache.conf" -e "$WORK/logs/cache-error.log"

echo "disk-bench-token-0123456789" > "$WORK/token"
cat > "$WORK/origins.toml" <<CONF
[[site]]
name = "bench"
hosts = ["bench.test"]
origins = ["http://127.0.0.1:$ORIGIN"]
CONF
edge_config() { # NAME [DISK-LINE]
  cat > "$WORK/$1.toml" <<CONF
id = "disk-bench"
region = "local"
roles = ["edge"]
origin_map = "origins.toml"
[log]
access_log = false
level = "warn"
[edge]
listen = ["127.0.0.1:$EDGE"]
cache_memory = "$CACHE"
${2:-}
[admin]
listen = "127.0.0.1:$ADMIN"
token_file = "token"
CONF
}
edge_config disk "cache_disk = { path = \"disk\", size = \"$DISK\" }"
edge_config memory

EDGE_PID=
start_edge() { # CONFIG
  stop_edge
  detached "$MERIDIAN" run -c "$WORK/$1.toml" 2>>"$WORK/logs/edge.log"
  EDGE_PID=$!
  PIDS+=("$EDGE_PID")
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$ADMIN/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "the edge did not start" >&2; cat "$WORK/logs/edge.log" >&2; exit 1
}
stop_edge() {
  if [ -n "$EDGE_PID" ]; then kill "$EDGE_PID"; wait "$EDGE_PID" 2>/dev/null || true; EDGE_PID=; fi
}
rss() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$EDGE_PID/status"; }
metric() { curl -fs "http://127.0.0.1:$ADMIN/metrics" | awk -v f="$1" 'index($0, f) == 1 { s += $NF } END { printf "%.0f", s }'; }

# wrk: object numbers drawn from a Zipf-like distribution over N objects (inverse CDF).
cat > "$WORK/zipf.lua" <<'LUA'
local threads = 0
function setup(thread) thread:set("id", threads); threads = threads + 1 end
function init(args)
  n = tonumber(args[1]); s = tonumber(args[2])
  cdf = {}; local sum = 0
  for k = 1, n do sum = sum + 1 / (k ^ s); cdf[k] = sum end
  for k = 1, n do cdf[k] = cdf[k] / sum end
  math.randomseed(id * 7919 + os.time())
  wrk.headers["Host"] = "bench.test"
end
function request()
  local u, lo, hi = math.random(), 1, n
  while lo < hi do local mid = math.floor((lo + hi) / 2); if cdf[mid] < u then lo = mid + 1 else hi = mid end end
  return wrk.format("GET", "/o/" .. lo)
end
LUA
# Runs the Zipf workload against PORT for SECS; prints "requests req/s hit-ratio".
zipf() { # PORT SECS
  local before after out n rps
  before=$(origin_requests)
  out=$(wrk -t2 -c32 -d"$2"s -s "$WORK/zipf.lua" "http://127.0.0.1:$1" -- "$OBJECTS" "$ZIPF")
  after=$(origin_requests)
  n=$(echo "$out" | awk '/requests in/ { print $1 }')
  rps=$(echo "$out" | awk '/Requests\/sec/ { printf "%.0f", $2 }')
  awk -v n="$n" -v o="$((after - before))" -v r="$rps" 'BEGIN { printf "%d %d %.3f\n", n, r, (n > 0 ? 1 - o / n : 0) }'
}
hot() { # PORT: req/s over a hot set of 64 objects that fits memory
  wrk -t2 -c32 -d"$RUN"s -s "$WORK/zipf.lua" "http://127.0.0.1:$1" -- 64 "$ZIPF" | awk '/Requests\/sec/ { printf "%.0f", $2 }'
}

echo "working set: $OBJECTS objects of 100 KiB ($(( OBJECTS * 100 / 1024 )) MiB), cache_memory $CACHE, disk $DISK, Zipf $ZIPF" >&2

# 1. meridian with its disk tier, and nginx proxy_cache: warm-up, then a measured run.
start_edge disk
zipf $EDGE "$WARM" >/dev/null
read -r _ m_rps m_ratio <<<"$(zipf $EDGE "$RUN")"
m_mem=$(metric 'meridian_cache_hits_total{node="disk-bench",tier="memory"}')
m_disk=$(metric 'meridian_cache_hits_total{node="disk-bench",tier="disk"}')
m_rss=$(rss)
zipf $NGINX "$WARM" >/dev/null
read -r _ n_rps n_ratio <<<"$(zipf $NGINX "$RUN")"

# 2. Restart with the disk tier: the first RESTART seconds.
start_edge disk
read -r _ r_rps r_ratio <<<"$(zipf $EDGE "$RESTART")"

# 3. Memory-only: warm, measure, restart, the first RESTART seconds.
start_edge memory
zipf $EDGE "$WARM" >/dev/null
read -r _ mo_rps mo_ratio <<<"$(zipf $EDGE "$RUN")"
start_edge memory
read -r _ mr_rps mr_ratio <<<"$(zipf $EDGE "$RESTART")"

# 4. A hot set that fits memory: memory-only, then with a disk tier.
start_edge memory
hot $EDGE >/dev/null
hot_mem=$(hot $EDGE)
start_edge disk
hot $EDGE >/dev/null
hot_disk=$(hot $EDGE)
stop_edge

cat <<EOF

### Working set of 4 × memory ($OBJECTS objects of 100 KiB, Zipf $ZIPF; cache_memory $CACHE, disk $DISK; ${RUN} s after ${WARM} s of warm-up)

| server | req/s | hit ratio | notes |
|---|---:|---:|---|
| meridian, memory + disk | $m_rps | $m_ratio | hits from memory $m_mem, from disk $m_disk (both runs); RSS $m_rss MiB |
| meridian, memory only | $mo_rps | $mo_ratio | |
| nginx proxy_cache | $n_rps | $n_ratio | files on disk, 2 workers |

### After a restart (first ${RESTART} s)

| meridian | hit ratio before | hit ratio after the restart | req/s after |
|---|---:|---:|---:|
| memory + disk | $m_ratio | $r_ratio | $r_rps |
| memory only | $mo_ratio | $mr_ratio | $mr_rps |

### Memory-tier hits (64 hot objects, ${RUN} s)

| meridian | req/s |
|---|---:|
| memory only | $hot_mem |
| memory + disk configured | $hot_disk ($(awk -v a="$hot_disk" -v b="$hot_mem" 'BEGIN { printf "%.2f", a / b }')×) |
EOF
