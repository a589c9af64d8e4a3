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
