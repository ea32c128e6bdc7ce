#!/usr/bin/env bash
# The main job: a local hub with two spokes, ready for kubectl.
#   - a hub apiserver and two spoke apiservers (etcd + kube-apiserver + kube-controller-manager each);
#   - as root, each spoke in its own network namespace whose firewall drops every new connection from the
#     hub side: the spokes can only be reached through the tunnels they dial out;
#   - tunnel-server on the hub, a tunnel-client per spoke holding only an impersonate-only ServiceAccount;
#   - on each spoke, cluster-admin for the hub's admin user (its identity policy never passes the hub's
#     system:masters, so the spoke grants the hub admin explicitly; the grant is printed);
#   - as root, a real node on spoke-a (kube-scheduler, containerd, kubelet; images built locally, since none
#     can be pulled), so pods run there and exec, logs -f and port-forward work through the hub;
#   - a kubeconfig with one context per spoke, through the hub, printed at the end with an example.
# Usage: deploy/dev/up.sh [up|down]      State in $TETHER_DEV_DIR (default: .tether in the repository).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEV=${TETHER_DEV_DIR:-$ROOT/.tether}
KUBECTL=${TETHER_CACHE:-/var/cache/tether}/kube-1.20.2/kubectl
BIN=$ROOT/target/debug
SPOKES=(spoke-a spoke-b)
PROXY_PORT=${TETHER_PROXY_PORT:-8443}
QUIC_PORT=${TETHER_QUIC_PORT:-8443}
ROOTFUL=0; [ "$(id -u)" = 0 ] && ROOTFUL=1

say() { echo "==> $*"; }
ns_of() { case $1 in spoke-*) if [ $ROOTFUL = 1 ]; then echo "tether-dev-${1#spoke-}"; fi ;; esac; }
in_ns() { local ns; ns=$(ns_of "$1"); shift; if [ -n "$ns" ]; then ip netns exec "$ns" "$@"; else "$@"; fi; }
index_of() { [ "$1" = spoke-a ] && echo 11 || echo 12; }
hub_ip_for() { if [ $ROOTFUL = 1 ]; then echo "10.251.$(index_of "$1").1"; else echo 127.0.0.1; fi; }

# Starts a command detached, its pid in a file; it outlives this script.
daemon() {
  local name=$1; shift
  setsid nohup "$@" >"$DEV/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$DEV/$name.pid"
}

wait_file() {
  local file=$1 what=$2 log=$3
  for _ in $(seq 300); do [ -s "$file" ] && return 0; sleep 0.1; done
  echo "$what did not become ready; last lines of $log:" >&2; tail -20 "$log" >&2; exit 1
}

down() {
  for pidfile in "$DEV"/*.pid; do
    [ -e "$pidfile" ] || continue
    kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
  for c in hub "${SPOKES[@]}"; do
    if [ -d "$DEV/$c" ]; then in_ns "$c" bash "$ROOT/deploy/dev/cluster.sh" stop "$DEV/$c" || true; fi
  done
  for s in "${SPOKES[@]}"; do
    ns=$(ns_of "$s")
    if [ -n "$ns" ]; then bash "$ROOT/deploy/dev/netns.sh" delete "$ns"; fi
  done
  return 0
}

case "${1:-up}" in
  down) down; say "stopped"; exit 0 ;;
  up) ;;
  *) echo "usage: $0 [up|down]" >&2; exit 2 ;;
esac

say "installing what is missing, building kube 1.20 (once) and tether"
bash "$ROOT/deploy/dev/deps.sh"
bash "$ROOT/deploy/dev/build-kube.sh"
(cd "$ROOT" && cargo build --workspace --bins --quiet)
if [ $ROOTFUL = 1 ]; then bash "$ROOT/deploy/dev/images.sh" build test >/dev/null; fi

down >/dev/null 2>&1 || true
rm -rf "$DEV"; mkdir -p "$DEV/logs" "$DEV/pki"

say "starting the hub and spoke apiservers"
for s in "${SPOKES[@]}"; do
  ns=$(ns_of "$s")
  if [ -n "$ns" ]; then bash "$ROOT/deploy/dev/netns.sh" create "$ns" "$(index_of "$s")"; fi
done
# The node needs root (containerd, cgroups); its pods live behind spoke-a's firewall like its apiserver.
node_flag() { if [ $ROOTFUL = 1 ] && [ "$1" = spoke-a ]; then echo --node; fi; }
pids=()
for s in "${SPOKES[@]}"; do
  # shellcheck disable=SC2046  # no flag, or one word
  in_ns "$s" bash "$ROOT/deploy/dev/cluster.sh" start "$s" "$DEV/$s" $(node_flag "$s") >/dev/null &
  pids+=("$!")
done
# The controller's own hub user (a static token): the tunnel-server lets it act only as push identities.
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEV/controller.token"
chmod 600 "$DEV/controller.token"
printf '%s,tether-controller,tether-controller,"tether:controllers"\n' "$(cat "$DEV/controller.token")" \
  >"$DEV/hub-tokens.csv"
bash "$ROOT/deploy/dev/cluster.sh" start hub "$DEV/hub" --extra-tokens "$DEV/hub-tokens.csv" >/dev/null
for p in "${pids[@]}"; do wait "$p" || { echo "a spoke did not start; logs in $DEV/spoke-*/" >&2; exit 1; }; done
HUB_KUBECONFIG=$DEV/hub/kubeconfig

say "registering the spokes on the hub"
"$KUBECTL" --kubeconfig "$HUB_KUBECONFIG" apply -f "$ROOT/deploy/hub/crds/" >/dev/null
"$KUBECTL" --kubeconfig "$HUB_KUBECONFIG" wait --for condition=established --timeout=60s \
  crd/managedclusters.tether.io crd/manifestpushes.tether.io crd/manifestdeliveries.tether.io >/dev/null
# Where tunnel-servers renew their Leases and the controller records revocations.
"$KUBECTL" --kubeconfig "$HUB_KUBECONFIG" create namespace tether-system >/dev/null
for s in "${SPOKES[@]}"; do
  printf 'apiVersion: tether.io/v1alpha1\nkind: ManagedCluster\nmetadata:\n  name: %s\nspec: {hubAcceptsClient: true}\n' "$s" |
    "$KUBECTL" --kubeconfig "$HUB_KUBECONFIG" apply -f - >/dev/null
done

say "issuing certificates"
ips=(--ip 127.0.0.1)
for s in "${SPOKES[@]}"; do ips+=(--ip "$(hub_ip_for "$s")"); done
"$BIN/tether-certs" init-ca --out "$DEV/pki" >/dev/null
"$BIN/tether-certs" serving --ca-dir "$DEV/pki" --dns localhost "${ips[@]}" --out "$DEV/pki/hub" >/dev/null
for s in "${SPOKES[@]}"; do
  "$BIN/tether-certs" issue-spoke --ca-dir "$DEV/pki" --cluster "$s" --out "$DEV/pki/$s" >/dev/null
  # The hub admin is user `admin` (client certificate CN=admin, O=system:masters); the default identity
  # policy maps it to `admin` without system:masters on the spoke.
  in_ns "$s" bash "$ROOT/deploy/dev/spoke-credentials.sh" "$DEV/$s/kubeconfig" "$DEV/$s/tether-client.kubeconfig" \
    admin | sed 's/^/    /'
done

say "starting tunnel-server (proxy https://localhost:$PROXY_PORT, QUIC udp/$QUIC_PORT)"
daemon tunnel-server "$BIN/tunnel-server" serve \
  --quic-addr "0.0.0.0:$QUIC_PORT" --proxy-addr "127.0.0.1:$PROXY_PORT" --ops-addr 127.0.0.1:0 \
  --tls-cert "$DEV/pki/hub/tls.crt" --tls-key "$DEV/pki/hub/tls.key" --tunnel-ca "$DEV/pki/ca.crt" \
  --client-ca "$DEV/hub/ca.crt" --hub-kubeconfig "$HUB_KUBECONFIG" --ready-file "$DEV/server.ready" \
  --push-controllers tether-controller
wait_file "$DEV/server.ready" tunnel-server "$DEV/logs/tunnel-server.log"

say "starting the controller"
# The dev tunnel-server talks to the hub as its admin: CSRs it files for joining spokes are requested by `admin`.
# Auto mode: the controller can only reach clusters outside the firewalled namespaces, which dial the hub on
# loopback.
daemon controller "$BIN/controller" --hub-kubeconfig "$HUB_KUBECONFIG" --ops-addr 127.0.0.1:0 \
  --ca-cert "$DEV/pki/ca.crt" --ca-key "$DEV/pki/ca.key" --bootstrap-requester admin \
  --hub-address "127.0.0.1:$QUIC_PORT" --hub-ca "$DEV/pki/ca.crt" \
  --proxy-url "https://localhost:$PROXY_PORT" --proxy-ca "$DEV/pki/ca.crt" \
  --proxy-token-file "$DEV/controller.token"

say "starting a tunnel-client in each spoke"
for s in "${SPOKES[@]}"; do
  prefix=(); ns=$(ns_of "$s"); if [ -n "$ns" ]; then prefix=(ip netns exec "$ns"); fi
  daemon "tunnel-client-$s" "${prefix[@]}" "$BIN/tunnel-client" \
    --hub "$(hub_ip_for "$s"):$QUIC_PORT" --hub-ca "$DEV/pki/ca.crt" \
    --cert "$DEV/pki/$s/tls.crt" --key "$DEV/pki/$s/tls.key" --kubeconfig "$DEV/$s/tether-client.kubeconfig" \
    --identity-policy-configmap tether-system/tether-identity-policy \
    --ops-addr 127.0.0.1:0 --ready-file "$DEV/client-$s.ready"
  wait_file "$DEV/client-$s.ready" "tunnel-client $s" "$DEV/logs/tunnel-client-$s.log"
done

say "letting hub namespace team-a push to the spokes (hub and spoke RBAC, as the README shows)"
"$KUBECTL" --kubeconfig "$HUB_KUBECONFIG" apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: push-to-clusters}
rules: [{apiGroups: [tether.io], resources: [managedclusters/proxy], verbs: ['*']}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: push-team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: push-to-clusters}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "tether:push:team-a"}]
YAML
for s in "${SPOKES[@]}"; do
  "$KUBECTL" --kubeconfig "$HUB_KUBECONFIG" label managedcluster "$s" env=dev --overwrite >/dev/null
  in_ns "$s" "$KUBECTL" --kubeconfig "$DEV/$s/kubeconfig" apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: tether-push, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "tether:push:team-a"}]
YAML
done

"$BIN/tunnel-server" kubeconfig --server "https://localhost:$PROXY_PORT" --ca-file "$DEV/pki/ca.crt" \
  --hub-kubeconfig "$HUB_KUBECONFIG" --out "$DEV/kubeconfig"
# One check through the tunnel before saying it works.
"$KUBECTL" --kubeconfig "$DEV/kubeconfig" --context spoke-a get namespace default -o name >/dev/null
NODE_EXAMPLE=
if [ $ROOTFUL = 1 ]; then
  "$KUBECTL" --kubeconfig "$DEV/kubeconfig" --context spoke-a wait --for condition=Ready node/spoke-a-node \
    --timeout=60s >/dev/null
  NODE_EXAMPLE="
spoke-a has a real node (spoke-a-node). Its images are local, so pods use imagePullPolicy Never:
  kubectl --context spoke-a run hello --image=localhost/tether/busybox:1.35.0 --image-pull-policy=Never \\
    --restart=Never -- httpd -f -p 8080 -h /etc
  kubectl --context spoke-a wait --for=condition=Ready pod/hello
  kubectl --context spoke-a exec -it hello -- sh
  kubectl --context spoke-a port-forward pod/hello 8080:8080 &
  curl -s http://127.0.0.1:8080/passwd
  kubectl --context spoke-a logs -f hello
"
fi

cat <<MSG

tether is up. Every context below goes kubectl -> hub proxy -> QUIC tunnel -> spoke apiserver:

  export KUBECONFIG=$DEV/kubeconfig
  kubectl --context spoke-a get namespaces
  kubectl --context spoke-b get pods -A
$NODE_EXAMPLE
You act on the spokes as hub user "admin", whom each spoke granted cluster-admin (ClusterRoleBinding
tether:hub-admins); the hub's system:masters is never passed to a spoke. A spoke's identity policy is its
ConfigMap tether-system/tether-identity-policy, followed live, e.g. only hub group "devs" passes:
  $KUBECTL --kubeconfig $DEV/spoke-a/kubeconfig -n tether-system create configmap tether-identity-policy \
    --from-literal=allowGroups=devs

The hub itself: KUBECONFIG=$HUB_KUBECONFIG ($KUBECTL get managedclusters shows each spoke's state).
Push a ConfigMap to every spoke labelled env=dev, as hub namespace team-a (which both spokes allow):
$KUBECTL --kubeconfig $HUB_KUBECONFIG apply -f - <<'YAML'
apiVersion: tether.io/v1alpha1
kind: ManifestPush
metadata: {name: hello, namespace: team-a}
spec:
  placement: {labelSelector: {matchLabels: {env: dev}}}
  manifests:
  - {apiVersion: v1, kind: ConfigMap, metadata: {name: hello, namespace: team-a}, data: {greeting: hi}}
YAML
  $KUBECTL --kubeconfig $HUB_KUBECONFIG get manifestpushes,manifestdeliveries -n team-a
  kubectl --context spoke-b get configmap hello -n team-a -o yaml
A kubectl of the clusters' version: $KUBECTL
Logs in $DEV/logs. Stop everything with: bash deploy/dev/up.sh down
MSG
