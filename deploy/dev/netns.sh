#!/usr/bin/env bash
# A network namespace playing a spoke behind a firewall: it reaches the host (the hub side) at 10.251.INDEX.1,
# but no new connection from outside reaches it, like a cluster behind NAT. Idempotent; silent on success.
#
# Usage:
#   netns.sh create NS INDEX   veth tth<INDEX>h (host, 10.251.INDEX.1/30) <-> tth<INDEX>s (in NS, 10.251.INDEX.2/30)
#   netns.sh delete NS
# Run a spoke inside it with `ip netns exec NS ...`.
set -euo pipefail

die() { echo "netns.sh: $*" >&2; exit 1; }

need_tools() {
  command -v ip >/dev/null && command -v nft >/dev/null && return
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables; } >/dev/null
}

create() {
  local ns=$1 i=$2
  [[ $i =~ ^[0-9]+$ && $i -le 255 ]] || die "INDEX must be 0..255, not $i"
  local host=tth${i}h spoke=tth${i}s
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  # Deleting the namespace destroys both veth ends, so a surviving host end always still has its peer in NS.
  ip link show "$host" >/dev/null 2>&1 || ip link add "$host" type veth peer name "$spoke" netns "$ns"
  ip addr replace "10.251.$i.1/30" dev "$host"
  ip link set "$host" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr replace "10.251.$i.2/30" dev "$spoke"
  ip -n "$ns" link set "$spoke" up
  ip -n "$ns" route replace default via "10.251.$i.1"
  # Add-then-delete makes the replacement one atomic transaction whether or not the table existed.
  # Only what arrives over the veth is outside; a spoke's pods (on a bridge inside NS) reach its apiserver.
  ip netns exec "$ns" nft -f - <<EOF
table inet tether_fw
delete table inet tether_fw
table inet tether_fw {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "$spoke" ct state established,related accept
    iifname "$spoke" drop
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname "$spoke" ct state established,related accept
    iifname "$spoke" drop
  }
}
EOF
}

delete() {
  local ns=$1
  [ -e "/run/netns/$ns" ] || return 0
  # Remove the veths explicitly: a process still running inside would otherwise keep NS, and them, alive.
  local link
  for link in $(ip -n "$ns" -o link show type veth | awk -F'[ :@]+' '{print $2}'); do
    # A node's pod veths may be going away on their own meanwhile.
    ip -n "$ns" link del "$link" 2>/dev/null || true
  done
  ip netns delete "$ns"
}

case ${1:-} in
  create) [ $# -eq 3 ] || die "usage: netns.sh create NS INDEX"; need_tools; create "$2" "$3" ;;
  delete) [ $# -eq 2 ] || die "usage: netns.sh delete NS"; need_tools; delete "$2" ;;
  *) die "usage: netns.sh create NS INDEX | delete NS" ;;
esac
