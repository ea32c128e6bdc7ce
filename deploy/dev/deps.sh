#!/usr/bin/env bash
# Debian packages the dev environment and the tests use, installed only when missing.
set -euo pipefail
need=()
for t in ip:iproute2 nft:nftables openssl:openssl python3:python3 setpriv:util-linux curl:curl shellcheck:shellcheck; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
