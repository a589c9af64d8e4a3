#!/usr/bin/env bash
# Queries/s and server CPU time per query of meridian's DNS role and gdnsd (geoip plugin), side
# by side: the same GeoIP database (geo/test-city.mmdb), the same three regions and edges as
# config/local/, answered for demo.meridian.test with an EDNS Client Subnet in every query.
#
#   benches/dns-load.sh [ROUNDS] [SECONDS]      defaults: 5 rounds of 10 s per server
#   CLIENTS=8 benches/dns-load.sh               dnsperf clients (sockets)
#   RATE=100000 benches/dns-load.sh             offer this many queries/s instead of as many as
#                                               dnsperf can send: CPU per query at equal load
#   SYSCALLS=1 benches/dns-load.sh              also count each server's system calls and
#                                               context switches per query (needs perf, root)
#
# Installs gdnsd and dnsperf from Debian if missing (needs root). Loopback only; every server
# started here is stopped on exit. On 2 cores dnsperf itself saturates near 200k queries/s, so the
# CPU time per query (from /proc/PID/stat, user+system) is the fairer figure.
set -euo pipefail

ROUNDS=${1:-5}
SECONDS_PER=${2:-10}
CLIENTS=${CLIENTS:-8}
cd "$(dirname "$0")/.."
ROOT=$(pwd)

missing=()
command -v gdnsd >/dev/null || missing+=(gdnsd)
command -v dnsperf >/dev/null || missing+=(dnsperf)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts its own gdnsd on port 53; ours uses 15354.
service gdnsd stop >/dev/null 2>&1 || true

cargo build --release --quiet --bin meridian
MERIDIAN=$ROOT/target/release/meridian

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
workdir

P_MERIDIAN=15353
P_GDNSD=15354

# --- meridian: config/local's cluster map, DNS on 127.0.0.1 --------------------------------------
cp "$ROOT/config/local/cluster.toml" "$WORK/cluster.toml"
cat > "$WORK/dns.toml" <<EOF
id = "dns-bench"
region = "eu-west"
roles = ["dns"]
cluster_map = "cluster.toml"
[log]
level = "warn"
[dns]
listen = ["127.0.0.1:$P_MERIDIAN"]
geoip = "$ROOT/geo/test-city.mmdb"
EOF
detached "$MERIDIAN" run -c "$WORK/dns.toml" 2>"$WORK/meridian.log"; PIDS+=($!)
MERIDIAN_PID=$!

# --- gdnsd: the same regions as datacenters with the same coordinates ---------------------------
mkdir -p "$WORK/gdnsd/zones" "$WORK/gdnsd/geoip" "$WORK/gdnsd-run" "$WORK/gdnsd-state"
cp "$ROOT/geo/test-city.mmdb" "$WORK/gdnsd/geoip/test-city.mmdb"
cat > "$WORK/gdnsd/config" <<EOF
options => {
  listen => [ 127.0.0.1:$P_GDNSD ],
  udp_threads => 2,
  tcp_threads => 1,
  run_dir => $WORK/gdnsd-run,
  state_dir => $WORK/gdnsd-state,
}
plugins => {
  geoip => {
    maps => {
      regions => {
        geoip2_db => test-city.mmdb,
        datacenters => [ us-west, eu-west, ap-east ],
        auto_dc_coords => {
          us-west => [ 47.61, -122.33 ],
          eu-west => [ 51.51, -0.13 ],
          ap-east => [ 35.68, 139.69 ],
        },
      }
    },
    resources => {
      demo => {
        map => regions,
        service_types => up,
        dcmap => {
          us-west => 127.0.0.11,
          eu-west => 127.0.0.12,
          ap-east => 127.0.0.13,
        }
      }
    }
  }
}
EOF
cat > "$WORK/gdnsd/zones/meridian.test" <<'EOF'
$TTL 30
@    SOA ns1 hostmaster 2026112701 3600 600 86400 30
@    NS  ns1
ns1  A   127.0.0.10
demo 30  DYNA geoip!demo
EOF
detached gdnsd -c "$WORK/gdnsd" start >"$WORK/gdnsd.log" 2>&1; PIDS+=($!)
GDNSD_PID=$!

# ECS for 175.16.199.0/24 (Changchun: ap-east): family 1, source 24, scope 0, 3 address bytes.
ECS="8:00011800af10c7"
echo "demo.meridian.test A" > "$WORK/queries.txt"

check() {
  for _ in $(seq 1 50); do
    out=$(dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/queries.txt" -n 1 -E "$ECS" 2>&1 || true)
    echo "$out" | grep -q "Queries completed: *1 " && return 0
    sleep 0.2
  done
  echo "server on port $1 did not answer:" >&2; echo "$out" >&2
  cat "$WORK/gdnsd.log" >&2 || true
  return 1
}
check $P_MERIDIAN
check $P_GDNSD

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
RESULTS="$WORK/results.txt"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  # Each round runs both, back to back, in alternating order: the per-round ratio below then
  # cancels the machine's slower and faster spells, and neither server always goes first.
  entries="meridian:$P_MERIDIAN:$MERIDIAN_PID gdnsd:$P_GDNSD:$GDNSD_PID"
  [ $((round % 2)) = 0 ] && entries="gdnsd:$P_GDNSD:$GDNSD_PID meridian:$P_MERIDIAN:$MERIDIAN_PID"
  for entry in $entries; do
    IFS=: read -r name port pid <<< "$entry"
    if [ "${SYSCALLS:-0}" = 1 ]; then
      perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pid" -o "$WORK/perf.txt" \
        -- sleep "$SECONDS_PER" & PERF_PID=$!
    fi
    before=$(ticks "$pid")
    out=$(dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/queries.txt" -l "$SECONDS_PER" -c "$CLIENTS" -T 1 -E "$ECS" -q 1000 ${RATE:+-Q "$RATE"} 2>&1)
    after=$(ticks "$pid")
    qps=$(echo "$out" | awk '/Queries per second/ { print $4 }')
    done_q=$(echo "$out" | awk '/Queries completed/ { print $3 }')
    lost=$(echo "$out" | awk '/Queries lost/ { print $3 }')
    cpu_us=$(awk -v t=$((after - before)) -v hz="$HZ" -v q="$done_q" 'BEGIN { printf "%.2f", t / hz * 1e6 / q }')
    echo "$name $qps $cpu_us $lost $round" >> "$RESULTS"
    echo "round $round $name: $qps q/s, $cpu_us µs CPU/query, lost $lost" >&2
    if [ "${SYSCALLS:-0}" = 1 ]; then
      wait "$PERF_PID" || true
      awk -F, -v q="$done_q" '$3 ~ /sys_enter|context-switches/ { printf "  %s per query: %.3f\n", $3, $1 / q }' \
        "$WORK/perf.txt" >&2
    fi
  done
done

python3 - "$RESULTS" "$ROUNDS" "$SECONDS_PER" "$CLIENTS" <<'EOF'
import os, statistics, sys
path, rounds, secs, clients = sys.argv[1:]
rows = {}
by_round = {}
for line in open(path):
    name, qps, cpu, lost, rnd = line.split()
    rows.setdefault(name, []).append((float(qps), float(cpu), int(lost)))
    by_round.setdefault(rnd, {})[name] = (float(qps), float(cpu))
rate = os.environ.get("RATE")
offered = f", offered {int(rate):,} queries/s" if rate else ""
print(f"\n### DNS with ECS (dnsperf -c {clients} -T 1 -l {secs}{offered}, median of {rounds} rounds)\n")
print("| server | queries/s | server CPU per query (µs) | lost |")
print("|---|---:|---:|---:|")
for name in ("meridian", "gdnsd"):
    r = rows.get(name, [])
    if r:
        print(f"| {name} | {statistics.median(x[0] for x in r):,.0f} | {statistics.median(x[1] for x in r):.2f} | {sum(x[2] for x in r)} |")
pairs = [r for r in by_round.values() if len(r) == 2]
if pairs:
    qps = statistics.median(r["meridian"][0] / r["gdnsd"][0] for r in pairs)
    cpu = statistics.median(r["meridian"][1] / r["gdnsd"][1] for r in pairs)
    wins = sum(r["meridian"][1] <= r["gdnsd"][1] for r in pairs)
    print(f"\nmeridian / gdnsd, median of the {len(pairs)} rounds' ratios: queries/s {qps:.3f}, "
          f"CPU per query {cpu:.3f} (meridian's CPU per query at or below gdnsd's in {wins} of {len(pairs)} rounds)")
EOF
