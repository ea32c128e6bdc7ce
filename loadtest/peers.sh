#!/usr/bin/env bash
# Peer comparison: `proxy` and `bulk` through tether, rathole and bore in one run, all in front of the same
# backend, each against the direct path measured in the same run.
#
#   bash loadtest/peers.sh [proxy|bulk|all] [extra loadtest arguments...]
#
# rathole (noise transport: encrypted, as tether's QUIC is) and bore (plain TCP: it has no encryption) are
# installed with `cargo install` into $TETHER_CACHE/peers (default /var/cache/tether/peers) once. Every
# request is TLS end to end to the backend on every path; the peers forward TCP.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${TETHER_CACHE:-/var/cache/tether}/peers
WHAT=${1:-all}
[ $# -gt 0 ] && shift
case $WHAT in proxy|bulk|all) ;; *) echo "peers.sh: first argument must be proxy, bulk or all" >&2; exit 2 ;; esac

install_peer() { # CRATE VERSION BINARY
  # Not --locked: rathole 0.5.0's lock file pins a `time` that current compilers reject.
  [ -x "$CACHE/bin/$3" ] || cargo install --quiet --root "$CACHE" "$1" --version "$2"
}
install_peer rathole 0.5.0 rathole
install_peer bore-cli 0.6.0 bore
cargo build --release --quiet -p loadtest
LOADTEST=$ROOT/target/release/loadtest

WORK=$(mktemp -d /tmp/tether-peers-XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# free_ports N: N TCP ports free right now, on loopback.
free_ports() {
  python3 -c 'import socket,sys
socks=[socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1",0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# wait_https PORT: until a GET through PORT reaches the backend (deadline 30 s).
wait_https() {
  local deadline=$((SECONDS + 30))
  until curl -sf --max-time 2 --cacert "$WORK/backend-ca.crt" "https://localhost:$1/version" >/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "peers.sh: nothing answers through port $1" >&2; exit 1; }
    sleep 0.1
  done
}

"$LOADTEST" role pki --dir "$WORK"
"$LOADTEST" role backend --cert "$WORK/backend.crt" --key "$WORK/backend.key" \
  --ready-file "$WORK/backend.ready" >"$WORK/backend.log" 2>&1 &
PIDS+=($!)
deadline=$((SECONDS + 30))
until [ -s "$WORK/backend.ready" ]; do
  [ $SECONDS -lt $deadline ] || { echo "peers.sh: backend did not start" >&2; exit 1; }
  sleep 0.05
done
BACKEND=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["addr"])' "$WORK/backend.ready")

read -r RH_CONTROL RH_PORT BORE_PORT <<<"$(free_ports 3)"
keys=$("$CACHE/bin/rathole" --genkey)
private=$(awk '/Private Key:/{getline; print}' <<<"$keys")
public=$(awk '/Public Key:/{getline; print}' <<<"$keys")
token=$(openssl rand -hex 16)
cat >"$WORK/rathole-server.toml" <<TOML
[server]
bind_addr = "127.0.0.1:$RH_CONTROL"
[server.transport]
type = "noise"
[server.transport.noise]
local_private_key = "$private"
[server.services.bench]
token = "$token"
bind_addr = "127.0.0.1:$RH_PORT"
TOML
cat >"$WORK/rathole-client.toml" <<TOML
[client]
remote_addr = "127.0.0.1:$RH_CONTROL"
[client.transport]
type = "noise"
[client.transport.noise]
remote_public_key = "$public"
[client.services.bench]
token = "$token"
local_addr = "$BACKEND"
TOML
"$CACHE/bin/rathole" --server "$WORK/rathole-server.toml" >"$WORK/rathole-server.log" 2>&1 &
RH_SERVER=$!; PIDS+=("$RH_SERVER")
"$CACHE/bin/rathole" --client "$WORK/rathole-client.toml" >"$WORK/rathole-client.log" 2>&1 &
RH_CLIENT=$!; PIDS+=("$RH_CLIENT")

# bore's control port is fixed (7835); its tunnel port is asked for explicitly.
"$CACHE/bin/bore" server --bind-addr 127.0.0.1 --min-port "$BORE_PORT" --max-port "$BORE_PORT" \
  >"$WORK/bore-server.log" 2>&1 &
BORE_SERVER=$!; PIDS+=("$BORE_SERVER")
wait_listening() {
  local deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "peers.sh: nothing listens on $1" >&2; exit 1; }
    sleep 0.05
  done
}
wait_listening 7835
"$CACHE/bin/bore" local "${BACKEND##*:}" --local-host 127.0.0.1 --to 127.0.0.1 --port "$BORE_PORT" \
  >"$WORK/bore-client.log" 2>&1 &
BORE_CLIENT=$!; PIDS+=("$BORE_CLIENT")

wait_https "$RH_PORT"
wait_https "$BORE_PORT"
peers=(--workdir "$WORK" --backend "$BACKEND"
  --peer "rathole=127.0.0.1:$RH_PORT" --peer-pids "rathole=$RH_SERVER,$RH_CLIENT"
  --peer "bore=127.0.0.1:$BORE_PORT" --peer-pids "bore=$BORE_SERVER,$BORE_CLIENT")
if [ "$WHAT" = proxy ] || [ "$WHAT" = all ]; then "$LOADTEST" proxy "${peers[@]}" "$@"; fi
if [ "$WHAT" = bulk ] || [ "$WHAT" = all ]; then "$LOADTEST" bulk "${peers[@]}" "$@"; fi
