#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and kubelet v1.20.2 from Debian bookworm's
# `kubernetes` source package (plus the source's pause.c, which the node's sandbox image is compiled from), and
# takes etcd 3.4 and kubectl 1.20 from Debian's binary packages. Nothing is installed system-wide: the
# binaries land in the cache directory, and a rerun with all of them present is a no-op.
#
# Usage: build-kube.sh [CACHE_DIR]     (default: $TETHER_CACHE or /var/cache/tether)
# Force a rebuild from scratch with TETHER_REBUILD=1.
set -euo pipefail

CACHE=${1:-${TETHER_CACHE:-/var/cache/tether}}
OUT="$CACHE/kube-1.20.2"
mkdir -p "$OUT"
BINS=(kube-apiserver kube-controller-manager kube-scheduler kubelet etcd kubectl)

# Bump RECIPE when the build changes in a way cached binaries must not survive (3: reflect2 1.0.2; 4: the node).
RECIPE=4
have_all() {
  for b in "${BINS[@]}"; do [ -x "$OUT/$b" ] || return 1; done
  [ -f "$OUT/pause.c" ] || return 1
  [ "$(cat "$OUT/.recipe" 2>/dev/null)" = "$RECIPE" ]
}
if [ "${TETHER_REBUILD:-0}" != 1 ] && have_all; then
  echo "kube binaries cached in $OUT"
  exit 0
fi

# Tools the build itself needs from the base system (present on Debian 12 images, installed if not).
need=()
for t in dpkg-source:dpkg-dev tar:tar xz:xz-utils; do
  command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

W=$(mktemp -d /tmp/tether-kube-build.XXXXXX)
trap 'rm -rf "$W"' EXIT

# A private apt configuration adding deb-src twins of the system's own sources; the system config is untouched.
mkdir -p "$W/apt/parts" "$W/apt/lists/partial" "$W/apt/archives/partial"
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  sed 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources >"$W/apt/parts/debian.sources"
else
  grep -h '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >"$W/apt/parts/src.list"
  cp /etc/apt/sources.list "$W/apt/parts/bin.list"
fi
A=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$W/apt/parts" -o "Dir::State::Lists=$W/apt/lists"
   -o "Dir::Cache::Archives=$W/apt/archives" -o Debug::NoLocking=1 -o APT::Sandbox::User=root -qq)
apt-get "${A[@]}" update
cd "$W"
echo "downloading kubernetes source, go 1.19, etcd, kubectl"
apt-get "${A[@]}" source --download-only kubernetes=1.20.5+really1.20.2-1.1+deb12u1
apt-get "${A[@]}" download golang-1.19-go golang-1.19-src etcd-server kubernetes-client golang-github-modern-go-reflect2-dev
for d in *.deb; do dpkg -x "$d" "$W/root"; done
tar xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz
# The vendored reflect2 1.0.1 predates Go 1.18: under Go 1.19 json-iterator then panics (nil dereference in
# reflect2.Type2) on JSON requests, e.g. a plain GET /api/v1/namespaces. Debian's Go packaging carries 1.0.2.
rm -rf kubernetes-1.20.2/vendor/github.com/modern-go/reflect2
cp -r "$W/root/usr/share/gocode/src/github.com/modern-go/reflect2" kubernetes-1.20.2/vendor/github.com/modern-go/

# GOPATH mode: module mode refuses the vendored tree ("updates to go.mod needed").
export GOROOT="$W/root/usr/lib/go-1.19" PATH="$W/root/usr/lib/go-1.19/bin:$PATH"
export GOPATH="$W/gopath" GOCACHE="$W/gocache" GO111MODULE=off GOFLAGS='' CGO_ENABLED=0 GOPROXY=off
mkdir -p "$GOPATH/src/k8s.io"
ln -s "$W/kubernetes-1.20.2" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

# The tarball lacks pkg/generated/openapi; generate it the way upstream's build does.
echo "generating openapi definitions"
go build -o "$W/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
pkgs=$(grep -rl --include='*.go' '+k8s:openapi-gen=true' pkg staging/src/k8s.io | xargs -n1 dirname | sort -u |
  sed -e 's#^staging/src/##' -e 's#^pkg/#k8s.io/kubernetes/pkg/#' | paste -sd, -)
"$W/openapi-gen" -i "$pkgs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h hack/boilerplate/boilerplate.generatego.txt -r "$W/openapi-violations.txt"

# Both version packages, as upstream's hack/lib/version.sh does: component-base feeds --version, client-go feeds
# the server's /version, which would otherwise say v0.0.0-master with empty major/minor (breaks Helm kubeVersion).
ldflags="-s -w"
for V in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean"
done
cp build/pause/linux/pause.c "$OUT/pause.c"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
  echo "building $cmd (a few minutes)"
  go build -ldflags "$ldflags" -o "$OUT/$cmd.tmp" "./cmd/$cmd"
  mv "$OUT/$cmd.tmp" "$OUT/$cmd"
done
install -m 0755 "$W/root/usr/bin/etcd" "$OUT/etcd"
install -m 0755 "$W/root/usr/bin/kubectl" "$OUT/kubectl"
echo "$RECIPE" >"$OUT/.recipe"
"$OUT/kube-apiserver" --version
"$OUT/kubectl" version --client --short 2>/dev/null || true
