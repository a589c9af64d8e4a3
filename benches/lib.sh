# Shared by the load scripts in benches/ (sourced, not run).

# need COMMAND:PACKAGE ...: installs from Debian the packages whose command is missing (as root).
need() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# bytes SIZE: 64MiB -> 67108864 (KiB, MiB, GiB or plain bytes).
bytes() {
  local n=${1%[KMG]iB}
  case $1 in *KiB) echo $((n << 10)) ;; *MiB) echo $((n << 20)) ;; *GiB) echo $((n << 30)) ;; *) echo "$1" ;; esac
}

# detached COMMAND...: starts COMMAND in the background in a session of its own ($! is its pid),
# as nginx and varnishd put themselves when they start (a daemon's setsid), and as a service
# manager gives each server a group of its own. With the kernel's autogroup scheduling on (the
# default on Debian), every session is one group that the scheduler shares the CPUs among: a
# server started from this script with plain `&` would share the script's group, and so its share
# of the CPUs, with the load generator, while the daemons each had a group to themselves. On
# 2026-12-05 that asymmetry alone cost meridian up to a quarter of its pass-through rate on
# this 2-core machine (46,087-53,214 against 61,459-63,216 req/s, the same build; README).
# instructions.sh does not need it: callgrind counts instructions, not time.
detached() {
  setsid "$@" &
}

# workdir: a scratch folder in WORK (readable by nginx's and varnishd's workers), removed on
# exit after every process whose pid is in PIDS or in a WORK/*.pid file (the nginx instances),
# and any varnishd working below WORK, are stopped.
workdir() {
  WORK=$(mktemp -d)
  chmod 755 "$WORK"
  PIDS=()
  trap cleanup EXIT
}
cleanup() {
  local p f
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$WORK"/*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  pkill -f "varnishd.*$WORK" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
