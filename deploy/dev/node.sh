# A real node for a cluster.sh control plane: kube-scheduler, one containerd (with Debian's runc and CNI
# plugins) and kubelet 1.20.2, all private to the cluster's DIR. Sourced by cluster.sh, which calls node_prepare
# before any process starts, node_start once the control plane is up, and node_cleanup when it stops.
#
# Two nodes on one machine never see each other: each has its own containerd root, state dir, socket and
# config, its own CNI network and IPAM state, its own cgroup tree (/tether-node-NAME-PID, under which kubelet
# keeps kubepods and which holds containerd, its shims and every container, so teardown finds them all), and its
# own mount namespace in which /var/log (pod logs), /run/containerd (shim sockets) and the cgroup hierarchies are
# private. Pods get addresses from 10.244.0.0/24 on a bridge inside the cluster's network namespace, so their
# traffic stays behind the same firewall as the apiserver. There is no kube-proxy: the one ClusterIP pods need,
# the apiserver's (10.96.0.1:443), is a DNAT rule in that namespace. Images come only from the local archives
# of deploy/dev/images.sh; the node can pull nothing.
# shellcheck shell=bash

NODE_IMAGES=(localhost/tether/pause:1.20.2 localhost/tether/busybox:1.35.0)
NODE_POD_CIDR=10.244.0.0/24

node_die() { die "node $NODE_NAME: $*"; }

# Runs before anything else: the node needs root, its binaries, and a mount namespace of its own.
node_prepare() {
  [ "$(id -u)" = 0 ] || die "--node needs root (containerd, cgroups, network namespaces)"
  for b in "$BIN/kubelet" "$BIN/kube-scheduler" /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 \
    /usr/sbin/runc /usr/bin/ctr /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback; do
    [ -x "$b" ] || die "--node: $b missing; run deploy/dev/build-kube.sh and deploy/dev/deps.sh"
  done
  if [ "${TETHER_NODE_MOUNTS:-}" != "$$" ]; then
    # Everything the node mounts (volumes, overlays, pod network namespaces) lives and dies with this namespace.
    TETHER_NODE_MOUNTS=$$ exec unshare --mount --propagation slave -- bash "$SELF" run "${RUN_ARGS[@]}"
  fi
}

# cgroup v1 hierarchies as the machine's init sees them: `ip netns exec` remounts /sys, hiding them.
node_mount_cgroups() {
  [ -d /sys/fs/cgroup/memory ] && [ -n "$(ls -A /sys/fs/cgroup/memory)" ] && return 0
  mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
  local src dir type opts found=0
  while read -r src dir type opts _; do
    case $type in cgroup | cgroup2) ;; *) continue ;; esac
    mkdir -p "$dir"
    mount -t "$type" -o "$opts" "$src" "$dir"
    found=1
  done < /proc/1/mounts
  [ "$found" = 1 ] || node_die "no cgroup hierarchy mounted on this machine"
}

# The node's cgroup in every v1 hierarchy; cpuset needs its cpus and mems copied from the parent first.
node_cgroups() {
  local c
  for c in /sys/fs/cgroup/*/; do
    [ -e "$c/cgroup.procs" ] || continue
    mkdir -p "$c$NODE_CGROUP/runtime"
    if [ -e "$c/cpuset.cpus" ]; then
      local d
      for d in "$c$NODE_CGROUP" "$c$NODE_CGROUP/runtime"; do
        cat "$c/cpuset.cpus" >"$d/cpuset.cpus"
        cat "$c/cpuset.mems" >"$d/cpuset.mems"
      done
    fi
    # This shell joins the runtime cgroup, so containerd, kubelet and every shim they start are found there.
    echo $$ >"$c$NODE_CGROUP/runtime/cgroup.procs"
  done
}

# Kills every process in a node cgroup tree (containers, shims) and removes the tree in every hierarchy.
node_reap_cgroup() {
  local cg=$1 procs pids _try
  for _try in $(seq 50); do
    pids=$(find "/sys/fs/cgroup/pids/$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | grep -vx "$$" || true)
    [ -n "$pids" ] || break
    # shellcheck disable=SC2086  # one pid per word
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  for procs in /sys/fs/cgroup/*/"$cg"; do
    if [ -d "$procs" ]; then find "$procs" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
}

node_cleanup() {
  [ -n "${NODE_CGROUP:-}" ] || return 0
  # This shell itself sits in the runtime cgroup; it leaves so the tree can go.
  local c
  for c in /sys/fs/cgroup/*/; do [ -e "$c/cgroup.procs" ] && echo $$ >"$c/cgroup.procs" 2>/dev/null; done
  node_reap_cgroup "$NODE_CGROUP"
}

# Trees of nodes whose supervisor was SIGKILLed (so never cleaned up) go before a new node of that name starts.
node_reap_stale() {
  local dir pid
  for dir in /sys/fs/cgroup/pids/tether-node-"$NAME"-*; do
    pid=${dir#/sys/fs/cgroup/pids/tether-node-"$NAME"-}
    # Only NAME's own trees: spoke-a's pattern also matches those of a cluster named spoke-a-x.
    if [ ! -d "$dir" ] || [[ ! $pid =~ ^[0-9]+$ ]]; then continue; fi
    supervisor_alive "$pid" || node_reap_cgroup "${dir#/sys/fs/cgroup/pids/}"
  done
}

# The address the apiserver reaches the kubelet on and pods masquerade to: the namespace's first non-loopback one.
node_ip() {
  ip -4 -o addr show scope global | awk '{sub(/\/.*/, "", $4); print $4; exit}'
}

node_certs() {
  local d=$DIR/node
  mkdir -p "$d"
  newkey "$d/kubelet.key"
  [ -s "$d/kubelet.crt" ] || sign "/O=system:nodes/CN=system:node:$NODE_NAME" "$d/kubelet.key" "$d/kubelet.crt" \
    keyUsage=critical,digitalSignature extendedKeyUsage=clientAuth
  newkey "$d/kubelet-serving.key"
  if [ "$(cat "$d/kubelet-serving.sans" 2>/dev/null)" != "$NODE_IP" ]; then
    sign "/CN=$NODE_NAME" "$d/kubelet-serving.key" "$d/kubelet-serving.crt" keyUsage=critical,digitalSignature \
      extendedKeyUsage=serverAuth "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"
    echo "$NODE_IP" >"$d/kubelet-serving.sans"
  fi
  # The apiserver's identity towards kubelets (exec, attach, logs, port-forward): system:masters, as kubeadm does.
  newkey kubelet-client.key
  [ -s kubelet-client.crt ] || sign "/O=system:masters/CN=kube-apiserver-kubelet-client" kubelet-client.key \
    kubelet-client.crt keyUsage=critical,digitalSignature extendedKeyUsage=clientAuth
}

# Written before the apiserver starts: the flags it needs to talk to this node's kubelet.
node_apiserver_args() {
  NODE_IP=$(node_ip)
  [ -n "$NODE_IP" ] || node_die "this network namespace has no IPv4 address for the node"
  node_certs
  apiserver_args+=(--kubelet-client-certificate="$DIR/kubelet-client.crt" --kubelet-client-key="$DIR/kubelet-client.key"
    --kubelet-certificate-authority="$DIR/ca.crt" --kubelet-preferred-address-types=InternalIP
    --advertise-address="$NODE_IP")
}

node_configs() {
  local d=$DIR/node kubelet_port=$1 stream_port=$2
  mkdir -p "$d/containerd/root" "$d/containerd/state" "$d/cni/net.d" "$d/cni/ipam" "$d/kubelet" "$d/varlog"
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$NODE_SOCK"
[ttrpc]
  address = "$NODE_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${NODE_IMAGES[0]}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "$stream_port"
  netns_mounts_under_state_dir = true
  # Without CAP_SYS_RESOURCE (these machines drop it) no OOM score may go below ours; the sandbox asks -998.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni/net.d"
EOF
  cat >"$d/cni/net.d/10-tether.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "tether-$NODE_NAME",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$d/cni/ipam", "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
               "routes": [{"dst": "0.0.0.0/0"}]}
    }
  ]
}
EOF
  # No cluster DNS: pods resolve with an empty resolv.conf (names in /etc/hosts only), never the machine's.
  : >"$d/resolv.conf"
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzPort: 0
tlsCertFile: $d/kubelet-serving.crt
tlsPrivateKeyFile: $d/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
failSwapOn: false
resolvConf: $d/resolv.conf
# Images cannot be pulled again here: never collect them, and never evict for a full disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
# Secrets and ConfigMaps reach mounted volumes within seconds, as tests that rotate them expect.
syncFrequency: 10s
EOF
  cat >"$d/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $NAME
  cluster: {server: "https://$NODE_IP:$PORT", certificate-authority: $DIR/ca.crt}
users:
- name: $NODE_NAME
  user: {client-certificate: $d/kubelet.crt, client-key: $d/kubelet.key}
contexts:
- name: node
  context: {cluster: $NAME, user: $NODE_NAME}
current-context: node
EOF
}

# Network plumbing of the cluster's namespace: forwarding for pods, and the apiserver's ClusterIP.
node_network() {
  [ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ] || {
    echo "node $NODE_NAME: not in a network namespace of its own; pods cannot reach 10.96.0.1" >&2
    return 0
  }
  sysctl -qw net.ipv4.ip_forward=1
  nft -f - <<EOF
table ip tether_svc
delete table ip tether_svc
table ip tether_svc {
  chain pre { type nat hook prerouting priority dstnat; ip daddr 10.96.0.1 tcp dport 443 dnat to $NODE_IP:$PORT; }
  chain out { type nat hook output priority -100; ip daddr 10.96.0.1 tcp dport 443 dnat to $NODE_IP:$PORT; }
}
EOF
}

node_ready() {
  api "/api/v1/nodes/$NODE_NAME" | python3 -c 'import json, sys
node = json.load(sys.stdin)
ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
sys.exit(0 if ready and ready[0]["status"] == "True" else 1)'
}

containerd_up() { ctr --address "$NODE_SOCK" version; }

# Starts scheduler, containerd (with the images imported) and kubelet, and waits until the node is Ready.
node_start() {
  local kubelet_port stream_port
  read -r kubelet_port stream_port < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("", 0))
print(*(s.getsockname()[1] for s in ss))')
  NODE_SOCK=$DIR/node/containerd.sock
  NODE_CGROUP=tether-node-$NAME-$$
  node_mount_cgroups
  node_reap_stale
  node_configs "$kubelet_port" "$stream_port"
  node_network
  # The kubelet takes an inotify instance per `logs -f` stream, and the limit is per user for the whole machine
  # (128 here): past it, follow streams end after their first line. Every Kubernetes node raises it.
  if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt 8192 ]; then
    echo "node $NODE_NAME: raising fs.inotify.max_user_instances to 8192 (the kubelet needs one per logs -f)"
    echo 8192 >/proc/sys/fs/inotify/max_user_instances
  fi
  mkdir -p /var/log /run/containerd "$DIR/node/run"
  mount --bind "$DIR/node/varlog" /var/log
  mount --bind "$DIR/node/run" /run/containerd
  node_cgroups
  # cluster.sh's umask 077 (for keys) would make every image layer's root 0700: no non-root container could
  # even stat its own entrypoint.
  umask 022

  spawn scheduler "$BIN/kube-scheduler" --kubeconfig="$DIR/controller-manager.kubeconfig" --leader-elect=false \
    --port=0 --secure-port=0
  spawn containerd /usr/bin/containerd --config "$DIR/node/containerd.toml"
  wait_for containerd 30 containerd_up
  local images
  read -ra images <<<"${TETHER_NODE_IMAGES:-}"
  bash "$(dirname "$SELF")/images.sh" import "$NODE_SOCK" "${NODE_IMAGES[@]}" "${images[@]}" ||
    node_die "the node's images are missing (above); build them with deploy/dev/images.sh"
  local taints=()
  if [ -n "${TETHER_NODE_TAINTS:-}" ]; then taints=(--register-with-taints="$TETHER_NODE_TAINTS"); fi
  spawn kubelet "$BIN/kubelet" --config="$DIR/node/kubelet.yaml" --kubeconfig="$DIR/node/kubelet.kubeconfig" \
    "${taints[@]}" \
    --container-runtime=remote --container-runtime-endpoint="unix://$NODE_SOCK" --root-dir="$DIR/node/kubelet" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --cert-dir="$DIR/node"
  wait_for "node $NODE_NAME Ready" 90 node_ready
}
