#!/usr/bin/env bash
# Debian packages the dev environment and the tests use, installed only when missing.
set -euo pipefail
need=()
for t in ip:iproute2 nft:nftables openssl:openssl python3:python3 setpriv:util-linux curl:curl shellcheck:shellcheck \
  gcc:gcc; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
# The dev node (cluster.sh --node): containerd with runc, the CNI plugins (whose bridge masquerades with
# iptables), and busybox-static for the test image (deploy/dev/images.sh).
for f in /usr/bin/containerd:containerd /usr/sbin/runc:runc /usr/lib/cni/bridge:containernetworking-plugins \
  /usr/sbin/iptables:iptables /bin/busybox:busybox-static; do
  [ -x "${f%%:*}" ] || need+=("${f#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
