#!/usr/bin/env bash
# A real Kubernetes 1.20 control plane (etcd + kube-apiserver + kube-controller-manager) for development and
# integration tests, one per directory, in whatever network namespace this runs in; with --node also a real node
# (kube-scheduler, containerd, kubelet: see node.sh) named NAME-node, on which pods run.
#
# Usage:
#   cluster.sh run    NAME DIR [--extra-tokens FILE] [--node]  supervise in the foreground until SIGTERM/SIGINT
#   cluster.sh start  NAME DIR [--extra-tokens FILE] [--node]  the same in the background; prints DIR/kubeconfig
#   cluster.sh stop   DIR                             stop it and wait until every process is gone
#   cluster.sh status DIR                             prints ready|starting|stopped; exit 0 only when ready
# FILE holds extra static tokens, one `token,user,uid,"group1,group2"` per line.
# Env: TETHER_CACHE (default /var/cache/tether) holds the binaries from build-kube.sh;
#      APISERVER_PORT pins the apiserver port, e.g. APISERVER_PORT=$(cat DIR/port) to keep it across a restart.
#      APISERVER_ARGS adds kube-apiserver flags, space-separated (e.g. --http2-max-streams-per-connection=1000);
#      TETHER_NODE_IMAGES names images (from deploy/dev/images.sh) the node imports besides pause and busybox;
#      TETHER_NODE_TAINTS taints the node when it registers (kubelet --register-with-taints).
# DIR then holds kubeconfig (admin client cert), admin.token (system:masters), port, ca.crt, pids, logs/.
set -euo pipefail

BIN=${TETHER_CACHE:-/var/cache/tether}/kube-1.20.2
SELF=$(readlink -f "$0")
PIDS=() NAMES=()
NODE=0
# shellcheck source=deploy/dev/node.sh
. "$(dirname "$SELF")/node.sh"

die() { echo "cluster.sh: $*" >&2; exit 1; }

# True if PID is a live cluster.sh (a zombie or a reused pid after a reboot must not count).
supervisor_alive() { [ -n "$1" ] && grep -qaF cluster.sh "/proc/$1/cmdline" 2>/dev/null; }

# ---------------------------------------------------------------- certificates (created once, then reused)

# EC P-256 in PKCS#8: instant to generate, and Go, openssl and rustls all read it.
newkey() { [ -s "$1" ] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

# sign SUBJECT KEY OUT EXTENSION... : a leaf certificate issued by the cluster CA.
sign() {
  local subj=$1 key=$2 out=$3; shift 3
  openssl req -new -key "$key" -subj "$subj" |
    openssl x509 -req -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" -days 3650 \
      -extfile <(printf '%s\n' basicConstraints=critical,CA:FALSE "$@") -out "$out" 2>/dev/null
}

certs() {
  newkey ca.key
  [ -s ca.crt ] || openssl req -x509 -new -key ca.key -subj "/CN=tether-dev-$NAME-ca" -days 3650 -out ca.crt \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  # Every IPv4 address of this netns, so tests may dial a veth address; 10.96.0.1 and the kubernetes.default
  # names are what in-cluster clients would use. Reissued whenever that set changes (e.g. DIR moved netns).
  local sans
  sans=$( { echo 127.0.0.1; ip -4 -o addr show | awk '{sub(/\/.*/, "", $4); print $4}'; } | sort -u |
    sed 's/^/IP:/' | paste -sd, -)
  sans="$sans,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  newkey apiserver.key
  if [ ! -s apiserver.crt ] || [ "$(cat apiserver.sans 2>/dev/null)" != "$sans" ]; then
    sign "/CN=kube-apiserver" apiserver.key apiserver.crt keyUsage=critical,digitalSignature \
      extendedKeyUsage=serverAuth "subjectAltName=$sans"
    echo "$sans" >apiserver.sans
  fi
  newkey admin.key
  [ -s admin.crt ] || sign "/O=system:masters/CN=admin" admin.key admin.crt keyUsage=critical,digitalSignature \
    extendedKeyUsage=clientAuth
  # ServiceAccount tokens: RSA, since RS256 is what every JWT consumer accepts.
  [ -s sa.key ] || openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
  [ -s sa.pub ] || openssl pkey -in sa.key -pubout -out sa.pub
  [ -s admin.token ] || openssl rand -hex 24 >admin.token
}

# kubeconfig FILE: the admin identity with everything embedded, so the file can be copied anywhere.
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $NAME
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority-data: $(base64 -w0 ca.crt)
users:
- name: $NAME-admin
  user:
    client-certificate-data: $(base64 -w0 admin.crt)
    client-key-data: $(base64 -w0 admin.key)
contexts:
- name: $NAME
  context: {cluster: $NAME, user: $NAME-admin}
current-context: $NAME
EOF
}

# ---------------------------------------------------------------- supervision

# spawn NAME CMD...: pdeathsig makes the child die with us even if we are SIGKILLed and cannot clean up.
spawn() {
  local n=$1; shift
  setpriv --pdeathsig KILL -- "$@" >"logs/$n.log" 2>&1 &
  PIDS+=("$!") NAMES+=("$n")
  echo "$n $!" >>pids
}

died() {
  local i=$1
  echo "cluster $NAME: ${NAMES[i]} (pid ${PIDS[i]}) exited; last lines of $DIR/logs/${NAMES[i]}.log:" >&2
  tail -n 20 "logs/${NAMES[i]}.log" >&2
  exit 1
}

# Bash reaps finished children on SIGCHLD, so kill -0 fails as soon as one has exited.
check_children() {
  local i
  for i in "${!PIDS[@]}"; do kill -0 "${PIDS[i]}" 2>/dev/null || died "$i"; done
}

# wait_for WHAT SECONDS CMD...: a condition wait that gives up early when a child dies meanwhile.
wait_for() {
  local what=$1 secs=$2 end=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    check_children
    [ "$SECONDS" -lt "$end" ] || die "cluster $NAME: $what not ready after ${secs}s; logs in $DIR/logs"
    sleep 0.2
  done
}

api() { curl -fsS --max-time 2 --cacert ca.crt --cert admin.crt --key admin.key "https://127.0.0.1:$PORT$1"; }
default_sa_has_token() { api /api/v1/namespaces/default/serviceaccounts/default | grep -q '"secrets"'; }

any_alive() {
  local p
  for p in "${PIDS[@]}"; do ! kill -0 "$p" 2>/dev/null || return 0; done
  return 1
}

cleanup() {
  local rc=$?
  # Ignored, not reset: a second SIGTERM (a process group signalled twice) must not cut the cleanup short
  # and leave a node's containers running.
  trap '' TERM INT HUP
  trap - EXIT
  rm -f "$DIR/ready"
  if [ ${#PIDS[@]} -gt 0 ]; then
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    for _ in $(seq 50); do  # 5 s of grace, then no more
      any_alive || break
      sleep 0.1
    done
    kill -KILL "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
  [ "$NODE" = 0 ] || node_cleanup
  [ "$(cat "$DIR/supervisor.pid" 2>/dev/null)" != $$ ] || rm -f "$DIR/supervisor.pid"
  exit "$rc"
}

run() {
  RUN_ARGS=("$@")
  NAME=$1 DIR=$2; shift 2
  local extra=
  while [ $# -gt 0 ]; do
    case $1 in
      --extra-tokens) extra=$(readlink -f "${2:?--extra-tokens needs a FILE}"); shift 2 ;;
      --node) NODE=1; shift ;;
      *) die "unknown argument $1" ;;
    esac
  done
  NODE_NAME=$NAME-node
  [ "$NODE" = 0 ] || node_prepare
  [[ $NAME =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] || die "NAME must be a DNS label: $NAME"
  [ -z "$extra" ] || [ -r "$extra" ] || die "cannot read $extra"
  for b in etcd kube-apiserver kube-controller-manager; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing; run deploy/dev/build-kube.sh"
  done
  umask 077  # keys and tokens
  mkdir -p "$DIR/logs"
  DIR=$(cd "$DIR" && pwd)
  cd "$DIR"
  local old
  old=$(cat supervisor.pid 2>/dev/null) || true
  [ "$old" = $$ ] || ! supervisor_alive "$old" || die "a supervisor (pid $old) already runs $DIR"
  trap cleanup EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  trap 'exit 129' HUP
  echo $$ >supervisor.pid
  rm -f ready pids

  certs
  # Rebuilt each run so a changed --extra-tokens file takes effect on restart.
  { echo "$(cat admin.token),admin-token,admin-token,\"system:masters\""
    [ -z "$extra" ] || sed '/^[[:space:]]*$/d' "$extra"; } >tokens.csv

  # Ports the kernel just handed out are free; the gap until the children bind them is a small race.
  local ports etcd_port peer_port
  ports=$(python3 -c 'import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("", 0))
print(*(s.getsockname()[1] for s in ss))')
  read -r etcd_port peer_port PORT <<<"$ports"
  PORT=${APISERVER_PORT:-$PORT}
  echo "$PORT" >port
  kubeconfig kubeconfig
  kubeconfig controller-manager.kubeconfig

  local etcd_url=http://127.0.0.1:$etcd_port peer_url=http://127.0.0.1:$peer_port apiserver_args
  read -ra apiserver_args <<<"${APISERVER_ARGS:-}"
  # Without a node no Pod runs, and the ServiceAccount admission would only get in the way of tests creating them.
  if [ "$NODE" = 1 ]; then node_apiserver_args; else apiserver_args+=(--disable-admission-plugins=ServiceAccount); fi
  spawn etcd "$BIN/etcd" --name "$NAME" --data-dir "$DIR/etcd" --logger=zap --unsafe-no-fsync \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" --initial-cluster "$NAME=$peer_url"
  wait_for etcd 30 curl -fsS --max-time 2 "$etcd_url/health"

  spawn apiserver "$BIN/kube-apiserver" --bind-address=0.0.0.0 --secure-port="$PORT" --insecure-port=0 \
    --etcd-servers="$etcd_url" --tls-cert-file="$DIR/apiserver.crt" --tls-private-key-file="$DIR/apiserver.key" \
    --client-ca-file="$DIR/ca.crt" --token-auth-file="$DIR/tokens.csv" --authorization-mode=Node,RBAC \
    --service-account-key-file="$DIR/sa.pub" --service-account-signing-key-file="$DIR/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-cluster-ip-range=10.96.0.0/24 --allow-privileged=true "${apiserver_args[@]}"
  wait_for apiserver 60 api /readyz

  # Started only now: it gives up after 10 s if the apiserver is not healthy yet.
  spawn controller-manager "$BIN/kube-controller-manager" --kubeconfig="$DIR/controller-manager.kubeconfig" \
    --leader-elect=false --port=0 --secure-port=0 --use-service-account-credentials=false --controllers='*' \
    --service-account-private-key-file="$DIR/sa.key" --root-ca-file="$DIR/ca.crt" --cluster-name="$NAME" \
    --cluster-signing-cert-file="$DIR/ca.crt" --cluster-signing-key-file="$DIR/ca.key"
  # The token Secret of `default` proves the ServiceAccount and token controllers are both running.
  wait_for "controller-manager (default ServiceAccount token)" 60 default_sa_has_token
  [ "$NODE" = 0 ] || node_start

  touch ready
  echo "cluster $NAME ready: $DIR/kubeconfig"
  local dead i
  while :; do
    dead=
    wait -n -p dead "${PIDS[@]}" || true  # a trapped signal also ends the wait, and its trap exits
    for i in "${!PIDS[@]}"; do [ "${PIDS[i]}" != "$dead" ] || died "$i"; done
  done
}

start() {
  local name=$1 dir=$2 pid end
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if supervisor_alive "$(cat "$dir/supervisor.pid" 2>/dev/null)" && [ -e "$dir/ready" ]; then
    echo "$dir/kubeconfig"
    return
  fi
  supervisor_alive "$(cat "$dir/supervisor.pid" 2>/dev/null)" && die "cluster in $dir is already starting"
  rm -f "$dir/ready"  # a SIGKILLed supervisor leaves it behind
  # Its own session so the caller's terminal signals and exit do not reach it.
  setsid nohup "$SELF" run "$name" "$dir" "${@:3}" >"$dir/supervisor.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/supervisor.pid"
  end=$((SECONDS + 180))  # a node adds containerd, image imports and registration
  until [ -e "$dir/ready" ]; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$end" ]; then
      kill -TERM "$pid" 2>/dev/null || true
      tail -n 30 "$dir/supervisor.log" >&2
      die "cluster $name did not become ready; see $dir/supervisor.log"
    fi
    sleep 0.2
  done
  echo "$dir/kubeconfig"
}

stop() {
  local dir=$1 pid end
  pid=$(cat "$dir/supervisor.pid" 2>/dev/null) || return 0
  if supervisor_alive "$pid"; then
    kill -TERM "$pid"
    # Its cleanup needs up to 5 s for the children; after 15 s something is stuck.
    end=$((SECONDS + 15))
    while supervisor_alive "$pid" && [ "$SECONDS" -lt "$end" ]; do sleep 0.2; done
    ! supervisor_alive "$pid" || kill -KILL "$pid"  # pdeathsig takes the children down with it
  fi
  rm -f "$dir/supervisor.pid" "$dir/ready"
}

status() {
  local dir=$1
  if ! supervisor_alive "$(cat "$dir/supervisor.pid" 2>/dev/null)"; then
    echo stopped
    return 3
  elif [ -e "$dir/ready" ]; then
    echo "ready port=$(cat "$dir/port") kubeconfig=$dir/kubeconfig"
  else
    echo starting
    return 1
  fi
}

usage() { sed -n '5,13p' "$SELF" | sed 's/^# //' >&2; exit 2; }

case ${1:-} in
  run | start) [ $# -ge 3 ] || usage; "$@" ;;
  stop | status) [ $# -eq 2 ] || usage; "$@" ;;
  *) usage ;;
esac
