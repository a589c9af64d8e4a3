#!/usr/bin/env bash
# Cache-hit throughput and latency of meridian, nginx (proxy_cache) and Varnish (malloc storage),
# side by side, in front of the same local origin on this machine; then the collapsing latency
# of each for a cold object whose origin takes 500 ms; then TLS cache hits of meridian and nginx
# with the same certificate, over HTTP/1.1 (wrk) and HTTP/2 (h2load); then the time to first byte
# of a cold 15 MiB object that its origin sends over 1.4 s, for the client that asks first and for
# 100 more asking at once 100 ms later (streaming fill: do they wait for the whole body?), with
# the origin asked directly by one client as the reference and bare hyper answering the same
# burst of new connections with a fixed 1 KiB as the floor; then pass-through (answers the origin
# marks `private`, and POSTs) against nginx `proxy_pass` with keep-alive upstreams and Varnish,
# with meridian's RSS sampled over a PASS_SECS run of them; then tail latency: the p99 of hits
# and of misses at a fixed rate, half the lower of meridian's and nginx's peak rate, with an
# open-loop client (examples/rate.rs: latency from each request's due time). Three reference rows: a bare hyper server
# returning a fixed body (the ceiling for any hit path on hyper), a bare hyper proxy with
# hyper-util's pooled client and no cache logic (examples/bare_proxy.rs: the ceiling for
# pass-through on the client the edge uses), and the slow origin asked directly by the same
# burst client (what the client and origin alone cost).
#
#   benches/http-load.sh [ROUNDS] [DURATION]      defaults: 5 rounds of 8s per server and size
#   CONNS=64 THREADS=2 benches/http-load.sh        wrk connections and threads
#   PARTS="hits tls collapse stream pass tail" benches/http-load.sh  which to run (default: all)
#   PASS_SECS=300 benches/http-load.sh             length of the pass-through RSS run (part "pass")
#   FOLLOWERS=100 benches/http-load.sh             clients that join the leader in "stream"
#   EDGE_THREADS=0 benches/http-load.sh            meridian's edge.threads (default: unset, one per core)
#   MERIDIAN_BIN=PATH benches/http-load.sh         run another build of meridian (an A/B)
#   TTFB_BIN=PATH benches/http-load.sh             another build of the streaming-fill client (examples/ttfb.rs)
#
# Installs nginx, varnish, wrk and h2load (nghttp2-client) from Debian if they are missing (needs root). Every address is
# on loopback; every server started here is stopped on exit. Prints markdown tables of medians.
set -euo pipefail

ROUNDS=${1:-5}
DURATION=${2:-8s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
BURST=${BURST:-200}
PARTS=${PARTS:-hits tls collapse stream pass tail}
PASS_SECS=${PASS_SECS:-300}
FOLLOWERS=${FOLLOWERS:-100}
EDGE_THREADS=${EDGE_THREADS:-}
want() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
cd "$(dirname "$0")/.."
ROOT=$(pwd)

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v varnishd >/dev/null || missing+=(varnish)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian packages start their own daemons on port 80 / 6081; ours use 18xxx.

cargo build --release --quiet --bin meridian --example bare_hyper --example bare_proxy --example ttfb --example rate
MERIDIAN=${MERIDIAN_BIN:-$ROOT/target/release/meridian}
BARE=$ROOT/target/release/examples/bare_hyper
BARE_PROXY=$ROOT/target/release/examples/bare_proxy
TTFB=${TTFB_BIN:-$ROOT/target/release/examples/ttfb}
RATE=$ROOT/target/release/examples/rate

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
workdir

ORIGIN=18000      # nginx serving static files
SLOW=18010        # python origin answering after 500 ms
P_MERIDIAN=18001
P_NGINX=18002
P_VARNISH=18003
P_BARE=18004      # bare hyper with a fixed body: the ceiling for any hit path built on hyper
P_BARE_PROXY=18007  # bare hyper proxy (hyper-util's pooled client, no cache logic): the pass-through ceiling
P_MERIDIAN_TLS=18005
P_NGINX_TLS=18006

mkdir -p "$WORK/www" "$WORK/nginx-cache" "$WORK/logs"
# One certificate (ECDSA P-256, like most CDN certificates) for both TLS servers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$WORK/bench.key" -out "$WORK/bench.pem" 2>/dev/null
head -c 1024 /dev/urandom > "$WORK/www/1k"
head -c 102400 /dev/urandom > "$WORK/www/100k"

# --- the origin: nginx serving files, fresh for an hour -----------------------------------------
cat > "$WORK/origin.conf" <<EOF
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/logs/origin-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$ORIGIN;
    root $WORK/www;
    expires 1h;
    # Pass-through: answers no cache may keep, and a POST endpoint.
    location /private/ { alias $WORK/www/; expires off; add_header Cache-Control private; }
    location = /post { return 200 "posted\n"; }
    # Misses: every path below /miss/ is a new 1 KiB object.
    location /miss/ { try_files /1k =404; }
  }
}
EOF
nginx -c "$WORK/origin.conf"
detached python3 "$ROOT/benches/slow_origin.py" serve $SLOW 500; PIDS+=($!)

# --- meridian -----------------------------------------------------------------------------------
cat > "$WORK/origins.toml" <<EOF
[[site]]
name = "bench"
hosts = ["bench.test"]
origins = ["http://127.0.0.1:$ORIGIN"]
tls_cert = "bench.pem"
tls_key = "bench.key"
[[site]]
name = "slow"
hosts = ["slow.test"]
origins = ["http://127.0.0.1:$SLOW"]
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
max_connections = 100000
${EDGE_THREADS:+threads = $EDGE_THREADS}
[edge.tls]
listen = ["127.0.0.1:$P_MERIDIAN_TLS"]
default_site = "bench"
EOF
# As deployed: `run` starts itself again with glibc's per-thread caches off (README).
detached "$MERIDIAN" run -c "$WORK/meridian.toml" 2>"$WORK/logs/meridian.log"; PIDS+=($!); MERIDIAN_PID=$!
detached "$BARE" 127.0.0.1:$P_BARE 1024; PIDS+=($!)
detached "$BARE_PROXY" 127.0.0.1:$P_BARE_PROXY 127.0.0.1:$ORIGIN pooled; PIDS+=($!)

# --- nginx proxy_cache (2 workers, like the 2 cores) --------------------------------------------
cat > "$WORK/cache.conf" <<EOF
worker_processes 2;
pid $WORK/cache.pid;
error_log $WORK/logs/cache-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  # nginx closes a connection after 1000 requests by default; h2load does not reconnect, and no
  # other server here has such a cap.
  keepalive_requests 10000000;
  proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=bench:64m max_size=1g inactive=1h use_temp_path=off;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
  upstream slow { server 127.0.0.1:$SLOW; keepalive 64; }
  server {
    listen 127.0.0.1:$P_NGINX default_server;
    listen 127.0.0.1:$P_NGINX_TLS ssl http2 default_server;
    ssl_certificate $WORK/bench.pem;
    ssl_certificate_key $WORK/bench.key;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      add_header X-Cache \$upstream_cache_status;
    }
  }
  server {
    listen 127.0.0.1:$P_NGINX;
    server_name slow.test;
    location / {
      proxy_pass http://slow;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 10s;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
EOF
nginx -c "$WORK/cache.conf"

# --- Varnish, malloc storage --------------------------------------------------------------------
cat > "$WORK/bench.vcl" <<EOF
vcl 4.1;
backend origin { .host = "127.0.0.1"; .port = "$ORIGIN"; }
backend slow { .host = "127.0.0.1"; .port = "$SLOW"; }
sub vcl_recv {
  if (req.http.host == "slow.test") { set req.backend_hint = slow; } else { set req.backend_hint = origin; }
}
EOF
varnishd -n "$WORK/varnish" -a 127.0.0.1:$P_VARNISH -f "$WORK/bench.vcl" -s malloc,1G \
  -p thread_pools=2 >/dev/null

wait_port() {
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$1/" -H 'Host: bench.test' && return 0
    sleep 0.1
  done
  echo "port $1 did not come up" >&2; return 1
}
for p in $ORIGIN $P_MERIDIAN $P_NGINX $P_VARNISH $P_BARE $P_BARE_PROXY; do wait_port $p; done

# --- warm every cache and check the second answer is a hit --------------------------------------
for p in $P_MERIDIAN $P_NGINX $P_VARNISH; do
  for obj in 1k 100k; do
    curl -s -o /dev/null -H 'Host: bench.test' "http://127.0.0.1:$p/$obj"
    curl -s -o /dev/null -H 'Host: bench.test' "http://127.0.0.1:$p/$obj"
    h=$(curl -s -D - -o /dev/null -H 'Host: bench.test' "http://127.0.0.1:$p/$obj" | tr -d '\r')
    echo "$h" | grep -qiE '^(cache-status: meridian; hit|x-cache: HIT|age: [0-9]+)' \
      || { echo "warning: port $p /$obj is not a cache hit after warm-up:" >&2; echo "$h" >&2; }
  done
done

# --- hit throughput -----------------------------------------------------------------------------
RESULTS="$WORK/results.txt"
: > "$RESULTS"
to_ms() { # wrk latency like 1.23ms / 456.00us / 1.02s -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
# wrk's report -> WRK_RPS, WRK_P50 and WRK_P99 (ms) and WRK_ERRORS (non-2xx or socket errors).
wrk_stats() {
  WRK_RPS=$(echo "$1" | awk '/Requests\/sec/ { print $2 }')
  WRK_P50=$(to_ms "$(echo "$1" | awk '$1 == "50%" { print $2 }')")
  WRK_P99=$(to_ms "$(echo "$1" | awk '$1 == "99%" { print $2 }')")
  WRK_ERRORS=$(echo "$1" | awk '/Non-2xx|Socket errors/ { print }' | tr '\n' ' ')
}
for round in $(seq 1 "$ROUNDS"); do
  want hits || break
  for obj in 1k 100k; do
    for entry in meridian:$P_MERIDIAN nginx:$P_NGINX varnish:$P_VARNISH bare-hyper:$P_BARE; do
      name=${entry%%:*}; port=${entry##*:}
      [ "$name" = bare-hyper ] && [ "$obj" != 1k ] && continue
      wrk_stats "$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H 'Host: bench.test' "http://127.0.0.1:$port/$obj")"
      echo "$obj $name $WRK_RPS $WRK_P50 $WRK_P99" >> "$RESULTS"
      echo "round $round $obj $name: $WRK_RPS req/s, p50 ${WRK_P50} ms, p99 ${WRK_P99} ms $WRK_ERRORS" >&2
    done
  done
done

# --- TLS hits: HTTP/1.1 (wrk) and HTTP/2 (h2load, 10 streams per connection) ----------------
TLS="$WORK/tls.txt"
: > "$TLS"
secs=${DURATION%s}
for p in $P_MERIDIAN_TLS $P_NGINX_TLS; do
  for obj in 1k 100k; do
    curl -sk -o /dev/null -H 'Host: bench.test' "https://127.0.0.1:$p/$obj"
    curl -sk -o /dev/null --http2 -H 'Host: bench.test' "https://127.0.0.1:$p/$obj"
  done
done
for round in $(seq 1 "$ROUNDS"); do
  want tls || break
  for obj in 1k 100k; do
    for entry in meridian:$P_MERIDIAN_TLS nginx:$P_NGINX_TLS; do
      name=${entry%%:*}; port=${entry##*:}
      wrk_stats "$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H 'Host: bench.test' "https://127.0.0.1:$port/$obj")"
      echo "$obj h1 $name $WRK_RPS $WRK_P99" >> "$TLS"
      echo "tls round $round $obj h1 $name: $WRK_RPS req/s, p99 ${WRK_P99} ms $WRK_ERRORS" >&2
      out=$(h2load -t"$THREADS" -c"$CONNS" -m10 -D "$secs" -H ':authority: bench.test' "https://127.0.0.1:$port/$obj" 2>&1)
      rps=$(echo "$out" | awk '/^finished in/ { gsub(",", "", $4); print $4 }')
      ok=$(echo "$out" | awk '/^requests:/ { print $8 }')
      mean=$(echo "$out" | awk '/^time for request:/ { print $6 }')
      echo "$obj h2 $name $rps $(to_ms "$mean")" >> "$TLS"
      echo "tls round $round $obj h2 $name: $rps req/s ($ok succeeded), mean $mean" >&2
    done
  done
done

# --- collapsing: BURST concurrent requests for a cold object, origin takes 500 ms ---------------
COLLAPSE="$WORK/collapse.txt"
: > "$COLLAPSE"
for round in $(seq 1 "$ROUNDS"); do
  want collapse || break
  for entry in meridian:$P_MERIDIAN nginx:$P_NGINX varnish:$P_VARNISH origin-direct:$SLOW; do
    name=${entry%%:*}; port=${entry##*:}
    path="/cold-$name-$round-$RANDOM"
    line=$(python3 "$ROOT/benches/slow_origin.py" burst "$port" slow.test "$path" "$BURST")
    fetches=$(python3 "$ROOT/benches/slow_origin.py" count $SLOW "$path")
    echo "$name $line fetches=$fetches" >> "$COLLAPSE"
    echo "collapse round $round $name: $line origin_fetches=$fetches" >&2
  done
done

# --- streaming fill: a cold 15 MiB object sent over 1.4 s; one client, then FOLLOWERS at once ----
STREAM="$WORK/stream.txt"
: > "$STREAM"
for round in $(seq 1 "$ROUNDS"); do
  want stream || break
  # bare-hyper: the same client's connections answered at once with a fixed 1 KiB, no backlog
  # to send: how soon this machine and client see the first byte of FOLLOWERS new connections.
  for entry in meridian:$P_MERIDIAN nginx:$P_NGINX varnish:$P_VARNISH origin-direct:$SLOW bare-hyper:$P_BARE; do
    name=${entry%%:*}; port=${entry##*:}
    path="/trickle/$name-$round-$RANDOM"
    # origin-direct: the origin's own times, for the first client and for FOLLOWERS asking it
    # at once (each its own fetch): what issue 13 measures the caches against.
    line=$("$TTFB" "127.0.0.1:$port" slow.test "$path" "$FOLLOWERS")
    fetches=$(python3 "$ROOT/benches/slow_origin.py" count $SLOW "$path")
    echo "$name $line fetches=$fetches round=$round" >> "$STREAM"
    echo "stream round $round $name: $line origin_fetches=$fetches" >&2
  done
done

# --- pass-through: private answers and POSTs, every request to the origin ------------------------
PASS="$WORK/pass.txt"
: > "$PASS"
cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 64)
wrk.headers["Content-Type"] = "text/plain"
LUA
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
for round in $(seq 1 "$ROUNDS"); do
  want pass || break
  for kind in private post; do
    for entry in meridian:$P_MERIDIAN nginx:$P_NGINX varnish:$P_VARNISH bare-proxy:$P_BARE_PROXY; do
      name=${entry%%:*}; port=${entry##*:}
      if [ "$kind" = post ]; then
        wrk_stats "$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$WORK/post.lua" -H 'Host: bench.test' "http://127.0.0.1:$port/post")"
      else
        wrk_stats "$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H 'Host: bench.test' "http://127.0.0.1:$port/private/1k")"
      fi
      echo "$kind $name $WRK_RPS $WRK_P99" >> "$PASS"
      echo "pass round $round $kind $name: $WRK_RPS req/s, p99 ${WRK_P99} ms $WRK_ERRORS" >&2
    done
  done
done
PASS_RSS=""
if want pass && [ -n "$MERIDIAN_PID" ]; then
  # meridian's RSS over a long run of pass-through requests (half private GETs, half POSTs).
  start_rss=$(rss_kib "$MERIDIAN_PID")
  samples="$start_rss"
  half=$((CONNS / 2))
  wrk -t1 -c"$half" -d"${PASS_SECS}s" -H 'Host: bench.test' "http://127.0.0.1:$P_MERIDIAN/private/1k" >/dev/null & w1=$!
  wrk -t1 -c"$half" -d"${PASS_SECS}s" -s "$WORK/post.lua" -H 'Host: bench.test' "http://127.0.0.1:$P_MERIDIAN/post" >/dev/null & w2=$!
  for _ in $(seq 1 10); do
    sleep $((PASS_SECS / 10))
    samples="$samples $(rss_kib "$MERIDIAN_PID")"
  done
  wait $w1 $w2 || true
  PASS_RSS="$samples"
  echo "pass-through RSS over ${PASS_SECS}s (KiB): $samples" >&2
fi

# --- tail latency: p99 at a fixed rate, half the lower peak of meridian and nginx ---------------
TAIL="$WORK/tail.txt"
: > "$TAIL"
if want tail; then
  for kind in hit miss; do
    if [ "$kind" = hit ]; then path=/1k; else path="/miss/{n}"; fi
    # Peaks, closed loop (wrk); misses on paths of their own so no one's are hits.
    peak() {
      local p=$1 url
      if [ "$kind" = hit ]; then url="http://127.0.0.1:$p/1k"; else url="http://127.0.0.1:$p/miss/peak-$p-$RANDOM"; fi
      if [ "$kind" = miss ]; then
        cat > "$WORK/miss.lua" <<LUA
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/miss/peak-$p-$RANDOM-" .. counter)
end
LUA
        wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$WORK/miss.lua" -H 'Host: bench.test' "$url" | awk '/Requests\/sec/ { print $2 }'
      else
        wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -H 'Host: bench.test' "$url" | awk '/Requests\/sec/ { print $2 }'
      fi
    }
    pm=$(peak $P_MERIDIAN); pn=$(peak $P_NGINX)
    rate=$(awk -v a="$pm" -v b="$pn" 'BEGIN { m = a < b ? a : b; printf "%d", m / 2 }')
    echo "tail $kind: peaks meridian $pm, nginx $pn req/s; fixed rate $rate" >&2
    for round in $(seq 1 "$ROUNDS"); do
      for entry in meridian:$P_MERIDIAN nginx:$P_NGINX varnish:$P_VARNISH; do
        name=${entry%%:*}; port=${entry##*:}
        p=$path; [ "$kind" = miss ] && p="/miss/$name-$round-$RANDOM-{n}"
        line=$("$RATE" "127.0.0.1:$port" bench.test "$p" "$rate" "$CONNS" "${DURATION%s}")
        echo "$kind $name $line" >> "$TAIL"
        echo "tail round $round $kind $name: $line" >&2
      done
    done
  done
fi

python3 - "$RESULTS" "$COLLAPSE" "$CONNS" "$THREADS" "$DURATION" "$ROUNDS" "$BURST" "$TLS" "$STREAM" "$FOLLOWERS" "$PASS" "$PASS_RSS" "$PASS_SECS" "$TAIL" <<'EOF'
import statistics, sys
results, collapse, conns, threads, duration, rounds, burst, tls, stream, followers, passes, pass_rss, pass_secs, tail = sys.argv[1:]
rows = {}
for line in open(results):
    obj, name, rps, p50, p99 = line.split()
    rows.setdefault((obj, name), []).append((float(rps), float(p50), float(p99)))
if rows:
    print(f"\n### Cache hits (wrk -t{threads} -c{conns} -d{duration}, median of {rounds} rounds)\n")
    print("| object | server | req/s | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|")
for obj in ("1k", "100k") if rows else ():
    best_other = 0
    for name in ("meridian", "nginx", "varnish", "bare-hyper"):
        r = rows.get((obj, name), [])
        if not r:
            continue
        rps = statistics.median(x[0] for x in r)
        if name in ("nginx", "varnish"):
            best_other = max(best_other, rps)
        print(f"| {obj} | {name} | {rps:,.0f} | {statistics.median(x[1] for x in r):.2f} | {statistics.median(x[2] for x in r):.2f} |")
    m = statistics.median(x[0] for x in rows.get((obj, "meridian"), [(0, 0, 0)]))
    if best_other:
        print(f"| {obj} | meridian / best other | {m / best_other:.2f}× | | |")
t = {}
for line in open(tls):
    obj, proto, name, rps, lat = line.split()
    t.setdefault((obj, proto, name), []).append((float(rps), float(lat)))
if t:
    print(f"\n### TLS cache hits ({conns} connections, median of {rounds} rounds; HTTP/1.1: wrk, p99; HTTP/2: h2load -m10, mean)\n")
    print("| object | protocol | meridian req/s | nginx req/s | meridian / nginx | meridian latency ms | nginx latency ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
for obj in ("1k", "100k") if t else ():
    for proto in ("h1", "h2"):
        m = t.get((obj, proto, "meridian"), [(0, 0)])
        n = t.get((obj, proto, "nginx"), [(0, 0)])
        mr, nr = statistics.median(x[0] for x in m), statistics.median(x[0] for x in n)
        ratio = f"{mr / nr:.2f}×" if nr else "-"
        label = "HTTP/1.1" if proto == "h1" else "HTTP/2"
        print(f"| {obj} | {label} | {mr:,.0f} | {nr:,.0f} | {ratio} | {statistics.median(x[1] for x in m):.2f} | {statistics.median(x[1] for x in n):.2f} |")
coll = {}
for line in open(collapse):
    parts = line.split()
    name = parts[0]
    kv = dict(p.split("=") for p in parts[1:])
    coll.setdefault(name, []).append(kv)
if coll:
    print(f"\n### Collapsing ({burst} concurrent requests, cold object, origin answers after 500 ms; median of {rounds} rounds)\n")
    print("| server | median answer (ms) | last answer (max ms) | origin fetches |")
    print("|---|---:|---:|---:|")
for name in ("meridian", "nginx", "varnish", "origin-direct"):
    r = coll.get(name, [])
    if not r:
        continue
    ok = min(int(x["ok"]) for x in r)
    print(f"| {name} | {statistics.median(float(x['p50_ms']) for x in r):.0f} | {statistics.median(float(x['max_ms']) for x in r):.0f} | {statistics.median(int(x['fetches']) for x in r):.0f} |" + ("" if ok == int(burst) else f" (only {ok} of {burst} answered 200)"))
st = {}
for line in open(stream):
    parts = line.split()
    st.setdefault(parts[0], []).append(dict(p.split("=") for p in parts[1:]))
if st:
    print(f"\n### Streaming fill (cold 15 MiB object sent by its origin over 1.4 s; a first client, then {followers} at once 100 ms later; median of {rounds} rounds)\n")
    print("| server | first client: first byte (ms) | whole body (ms) | followers: first byte, median (ms) | last (ms) | whole body, median (ms) | origin fetches |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("meridian", "nginx", "varnish", "origin-direct", "bare-hyper"):
        r = st.get(name, [])
        if not r:
            continue
        n = int(followers) + 1
        ok = min(int(x["ok"]) for x in r)
        med = lambda k: statistics.median(float(x[k]) for x in r)
        follow = "| - | - | - " if n == 1 else f"| {med('ttfb_p50_ms'):.1f} | {med('ttfb_max_ms'):.1f} | {med('full_p50_ms'):.0f} "
        fetches = "-" if name == "bare-hyper" else f"{statistics.median(int(x['fetches']) for x in r):.0f}"
        label = "bare-hyper (fixed 1 KiB, the floor)" if name == "bare-hyper" else name
        print(f"| {label} | {med('lead_ttfb_ms'):.1f} | {med('lead_full_ms'):.0f} {follow}| {fetches} |" + ("" if ok == n else f" (only {ok} of {n} got the whole body)"))
    # Issue 13's target: each cache's first bytes within 5 ms of the origin's own, round by round.
    direct = {x["round"]: x for x in st.get("origin-direct", [])}
    for name in ("meridian", "nginx", "varnish"):
        d = {k: [float(x[k]) - float(direct[x["round"]][k]) for x in st.get(name, []) if x["round"] in direct]
             for k in ("lead_ttfb_ms", "ttfb_p50_ms", "ttfb_max_ms")}
        if d["lead_ttfb_ms"]:
            print(f"\n{name} minus origin-direct, per round (ms): first client {', '.join(f'{v:+.1f}' for v in d['lead_ttfb_ms'])}; "
                  f"median follower {', '.join(f'{v:+.1f}' for v in d['ttfb_p50_ms'])}; last follower {', '.join(f'{v:+.1f}' for v in d['ttfb_max_ms'])}")
pa = {}
for line in open(passes):
    kind, name, rps, p99 = line.split()
    pa.setdefault((kind, name), []).append((float(rps), float(p99)))
if pa:
    print(f"\n### Pass-through (every request to the origin; wrk -c{conns}, median of {rounds} rounds)\n")
    print("| request | server | req/s | p99 ms |")
    print("|---|---|---:|---:|")
    for kind, label in (("private", "GET, origin says private"), ("post", "POST")):
        for name in ("meridian", "nginx", "varnish", "bare-proxy"):
            r = pa.get((kind, name), [])
            if r:
                print(f"| {label} | {name} | {statistics.median(x[0] for x in r):,.0f} | {statistics.median(x[1] for x in r):.2f} |")
        m = statistics.median(x[0] for x in pa.get((kind, "meridian"), [(0, 0)]))
        n = statistics.median(x[0] for x in pa.get((kind, "nginx"), [(0, 0)]))
        b = statistics.median(x[0] for x in pa.get((kind, "bare-proxy"), [(0, 0)]))
        if n:
            print(f"| {label} | meridian / nginx | {m / n:.2f}× | |")
            print(f"| {label} | bare-proxy / nginx | {b / n:.2f}× | |")
if pass_rss:
    kib = [int(x) for x in pass_rss.split()]
    print(f"\nmeridian RSS over {pass_secs} s of pass-through (KiB, every tenth): {' '.join(map(str, kib))} (first {kib[0] / 1024:.1f} MiB, last {kib[-1] / 1024:.1f} MiB)")
ta = {}
for line in open(tail):
    parts = line.split()
    ta.setdefault((parts[0], parts[1]), []).append(dict(p.split("=") for p in parts[2:]))
if ta:
    print(f"\n### Tail latency at a fixed rate (half the lower peak of meridian and nginx; examples/rate.rs, {conns} connections, median of {rounds} rounds)\n")
    print("| request | server | rate req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind in ("hit", "miss"):
        for name in ("meridian", "nginx", "varnish"):
            r = ta.get((kind, name), [])
            if not r:
                continue
            med = lambda k: statistics.median(float(x[k]) for x in r)
            print(f"| {kind} | {name} | {med('rate'):,.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {med('p999_ms'):.2f} | {med('max_ms'):.1f} | {sum(int(x['errors']) for x in r)} |")

EOF
