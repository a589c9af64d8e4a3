#!/usr/bin/env bash
# Memory of a meridian edge under floods, never scraped: resident memory (RSS) after a run of
# cache hits (the metrics must not grow with requests), after floods of new 1 KiB, 16 KiB and
# 100 KiB objects (each on a fresh edge, then all three sizes mixed) into a cache of CACHE bytes
# (RSS must stay within 1.25 x CACHE + the edge's base, measured after warm-up), and after a
# purge of everything (RSS must fall back near the base). Also reports the RSS per stored 1 KiB
# object while everything fits.
#
#   benches/memory.sh                 CACHE=64MiB, 200,000 hits, floods of 3 x CACHE bytes each
#   CACHE=256MiB HITS=1000000 SETTLE=5 benches/memory.sh
#   EDGE_ENV="MALLOC_ARENA_MAX=1" benches/memory.sh     environment of the edge (allocator tuning)
#   EDGE_THREADS=0 benches/memory.sh                    the edge's edge.threads (default: unset, one per core)
#   MERIDIAN_BIN=PATH benches/memory.sh                 run another build of meridian (an A/B; nothing is built)
#
# Needs nginx (origin) and wrk from Debian (installed if missing, as root). Loopback only; every
# process started here is stopped on exit. Prints one markdown table.
set -euo pipefail

CACHE=${CACHE:-64MiB}
HITS=${HITS:-200000}
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
need nginx:nginx wrk:wrk curl:curl
if [ -z "${MERIDIAN_BIN:-}" ]; then
  cargo build --release --quiet --bin meridian
fi
MERIDIAN=${MERIDIAN_BIN:-$ROOT/target/release/meridian}

workdir

ORIGIN=18100
EDGE=18101
ADMIN=18102
CACHE_BYTES=$(bytes "$CACHE")

mkdir -p "$WORK/www" "$WORK/logs"
head -c 1024 /dev/urandom > "$WORK/www/1k"
head -c 16384 /dev/urandom > "$WORK/www/16k"
head -c 102400 /dev/urandom > "$WORK/www/100k"
cat > "$WORK/origin.conf" <<CONF
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/logs/origin-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$ORIGIN;
    root $WORK/www;
    location /k1/ { try_files /1k =404; expires 1h; }
    location /k16/ { try_files /16k =404; expires 1h; }
    location /k100/ { try_files /100k =404; expires 1h; }
    location = /hot { try_files /1k =404; expires 1h; }
  }
}
CONF
nginx -c "$WORK/origin.conf" -e "$WORK/logs/origin-error.log"

echo "mem-bench-token-0123456789" > "$WORK/token"
cat > "$WORK/origins.toml" <<CONF
[[site]]
name = "bench"
hosts = ["bench.test"]
origins = ["http://127.0.0.1:$ORIGIN"]
CONF
cat > "$WORK/edge.toml" <<CONF
id = "mem-bench"
region = "local"
roles = ["edge"]
origin_map = "origins.toml"
[log]
access_log = false
level = "warn"
[edge]
listen = ["127.0.0.1:$EDGE"]
cache_memory = "$CACHE"
${EDGE_THREADS:+threads = $EDGE_THREADS}
max_object_size = "$(( CACHE_BYTES / 4 < 16777216 ? CACHE_BYTES / 4 : 16777216 ))"
[admin]
listen = "127.0.0.1:$ADMIN"
token_file = "token"
CONF

EDGE_PID=
start_edge() {
  if [ -n "$EDGE_PID" ]; then kill "$EDGE_PID"; wait "$EDGE_PID" 2>/dev/null || true; fi
  # shellcheck disable=SC2086 # EDGE_ENV is a list of VAR=value words
  detached env ${EDGE_ENV:-} "$MERIDIAN" run -c "$WORK/edge.toml" 2>"$WORK/logs/edge.log"
  EDGE_PID=$!
  PIDS+=("$EDGE_PID")
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$ADMIN/healthz" >/dev/null && break; sleep 0.1; done
  code=$(curl -s -H "Host: bench.test" "http://127.0.0.1:$EDGE/hot" -o /dev/null -w "%{http_code}" || true)
  if [ "$code" != 200 ]; then
    echo "the edge answered $code for /hot" >&2
    cat "$WORK/logs/edge.log" >&2
    exit 1
  fi
}
rss() { awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$EDGE_PID/status"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
stored() { # bytes and objects the cache counts, from /metrics
  local m
  m=$(curl -fs "http://127.0.0.1:$ADMIN/metrics")
  echo "$(echo "$m" | awk '/^meridian_cache_stored_bytes/ { print int($2) }') $(echo "$m" | awk '/^meridian_cache_stored_objects/ { print int($2) }')"
}

# wrk script: new URLs under the prefixes given (one picked at random per request, so several
# prefixes make a mixed flood); with a limit, each thread makes that many, then asks for /hot.
cat > "$WORK/unique.lua" <<'LUA'
local counter = 0
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  prefixes = {}
  for p in string.gmatch(args[1], "[^,]+") do table.insert(prefixes, p) end
  limit = tonumber(args[2]) or math.huge
  tag = args[3] or ""
  math.randomseed(id * 7919 + os.time())
end
function request()
  counter = counter + 1
  if counter > limit then
    return wrk.format("GET", "/hot", { Host = "bench.test" })
  end
  local p = prefixes[math.random(#prefixes)]
  return wrk.format("GET", p .. tag .. id .. "-" .. counter, { Host = "bench.test" })
end
LUA
cat > "$WORK/hot.lua" <<'LUA'
wrk.headers["Host"] = "bench.test"
LUA
# Asks for at least COUNT new URLs under PREFIXES (comma-separated) in rounds of 3 s; with
# EXACT, each round's two threads stop making new URLs after their share of COUNT.
flood() { # PREFIXES COUNT [EXACT]
  local prefixes=$1 count=$2 exact=${3:-} done_=0 limit=x
  [ -n "$exact" ] && limit=$((count / 2))
  while [ "$done_" -lt "$count" ]; do
    out=$(wrk -t2 -c16 -d3s -s "$WORK/unique.lua" "http://127.0.0.1:$EDGE" -- "$prefixes" "$limit" "$RANDOM-")
    n=$(echo "$out" | awk '/requests in/ { print $1 }')
    if [ -n "$exact" ]; then done_=$count; else done_=$((done_ + n)); fi
  done
  echo "$done_"
}
row() { # LABEL RSS [BOUND]
  local within=""
  if [ -n "${3:-}" ]; then within=$([ "$2" -le "$3" ] && echo yes || echo NO); fi
  echo "| $1 | $(mib "$2") | ${3:+$(mib "$3")} | $within |"
}
# A few seconds of hits, so that connections and buffers exist before a base is taken.
warm() { wrk -t2 -c16 -d2s -s "$WORK/hot.lua" "http://127.0.0.1:$EDGE/hot" >/dev/null; sleep 1; }

echo "| stage (cache_memory = $CACHE) | RSS MiB | bound MiB | within |"
echo "|---|---:|---:|---|"

# 1. Hits without any scrape: RSS must not grow with the number of requests.
start_edge
warm
before=$(rss)
asked=0
while [ "$asked" -lt "$HITS" ]; do
  n=$(wrk -t2 -c16 -d3s -s "$WORK/hot.lua" "http://127.0.0.1:$EDGE/hot" | awk '/requests in/ { print $1 }')
  asked=$((asked + n))
done
sleep 2
after=$(rss)
row "$asked hits, never scraped (grew $(mib $((after - before))) MiB)" "$after" $((before + 2097152))

# 2. RSS per stored 1 KiB object while everything fits (a quarter of the cache's worth).
start_edge
warm
BASE=$(rss)
flood /k1/ $((CACHE_BYTES / 4 / 4096)) exact >/dev/null
sleep 1
now=$(rss)
read -r sb so <<<"$(stored)"
row "$so objects of 1 KiB, counted $(mib "$sb") MiB: $(( (now - BASE) / (so > 0 ? so : 1) )) B of RSS each" "$now"

# 3. Floods of three times the cache's size: one size on a fresh edge each, then all mixed.
for prefixes in /k1/ /k16/ /k100/ /k1/,/k16/,/k100/; do
  start_edge
  warm
  BASE=$(rss)
  BOUND=$((BASE + CACHE_BYTES * 5 / 4))
  case $prefixes in /k1/) avg=1 ;; /k16/) avg=16 ;; /k100/) avg=100 ;; *) avg=39 ;; esac
  n=$(flood "$prefixes" $((CACHE_BYTES * 3 / (avg * 1024))))
  sleep "${SETTLE:-2}"
  read -r sb so <<<"$(stored)"
  row "flood of $n new objects under $prefixes ($so stored, counted $(mib "$sb") MiB)" "$(rss)" "$BOUND"
done

# 4. Purge everything after the mixed flood: RSS falls back to within a quarter of the cache of
# the base.
curl -fs -X POST -H "Authorization: Bearer $(cat "$WORK/token")" \
  -d '{"prefix":"http://bench.test/"}' "http://127.0.0.1:$ADMIN/purge" >/dev/null
sleep 2
row "purged everything" "$(rss)" $((BASE + CACHE_BYTES / 4))
