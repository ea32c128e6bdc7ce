#!/usr/bin/env bash
# Builds tether's container images as OCI archives, with no container engine and no registry (none is
# reachable from the machines tether is tested on), and imports them into a containerd. The images are
# deploy/images/*/Containerfile: deploy/dev/oci-archive.py turns one and its context into an archive, and
# buildah/podman build the same image from the same file and context.
#
# Usage:
#   images.sh build test [CACHE]            pause + busybox, the dev node's images
#   images.sh build tether BIN_DIR [CACHE]  tunnel-client, tunnel-server, controller from the release (static)
#                                           binaries in BIN_DIR
#   images.sh build NAME BIN_DIR [CACHE]    one of those three (the e2e suite needs only tunnel-client)
#   images.sh context NAME DIR [BIN_DIR]    stage NAME's build context in DIR (for buildah/podman)
#   images.sh import SOCKET NAME...|all     `ctr -n k8s.io images import` into the containerd at SOCKET, and
#                                           check the names are listed; NAME is short (pause) or the full ref
# Archives are CACHE/images/NAME.oci.tar (CACHE: $TETHER_CACHE or /var/cache/tether), each with the hash of
# its inputs (Containerfile, context, name, writer, SOURCE_DATE_EPOCH) in NAME.oci.tar.inputs: an image whose
# inputs are unchanged is not rewritten. TETHER_REBUILD=1 rewrites it anyway.
set -euo pipefail
umask 022 # the staged context's modes become the image's

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TEST_IMAGES=(pause busybox)
TETHER_IMAGES=(tunnel-client tunnel-server controller)
BUSYBOX_VERSION=1.35.0
# pause.c's VERSION as upstream's build/pause/Makefile of v1.20.2 forms it (v$(TAG)-$(git describe)).
PAUSE_VERSION=v3.4-v1.20.2
# The tether binaries the images want: static, so that they run in an empty root.
CARGO_STATIC="RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu \
--bin tunnel-client --bin tunnel-server --bin controller"

die() { echo "images.sh: $*" >&2; exit 1; }

# The tether images' tag: the workspace version, as the manifests and DEFAULT_CLIENT_IMAGE use it.
VERSION=$(python3 -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["workspace"]["package"]["version"])' "$ROOT/Cargo.toml")

ref() {
  case $1 in
    pause) echo localhost/tether/pause:1.20.2 ;;
    busybox) echo "localhost/tether/busybox:$BUSYBOX_VERSION" ;;
    tunnel-client | tunnel-server | controller) echo "ghcr.io/tether-io/$1:$VERSION" ;;
    *) die "unknown image $1 (pause, busybox, tunnel-client, tunnel-server, controller)" ;;
  esac
}

build_command() {
  case $1 in
    pause | busybox) echo "bash deploy/dev/images.sh build test" ;;
    *) echo "$CARGO_STATIC && bash deploy/dev/images.sh build tether target/x86_64-unknown-linux-gnu/release" ;;
  esac
}

# The users every image knows, and host names looked up in /etc/hosts (kubelet's, with hostAliases), then DNS:
# the two sources static glibc has built in (it would try to dlopen any other module named here).
stage_etc() {
  mkdir -p "$1/etc"
  printf '%s\n' root:x:0:0:root:/root:/bin/sh nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin \
    nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin >"$1/etc/passwd"
  printf '%s\n' root:x:0: nogroup:x:65534: nonroot:x:65532: >"$1/etc/group"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$1/etc/nsswitch.conf"
}

stage_pause() { # DIR
  local src=$CACHE/kube-1.20.2/pause.c
  [ -f "$src" ] || die "pause: $src missing; run deploy/dev/build-kube.sh (it keeps the source's pause.c)"
  gcc -Os -Wall -Werror -static -DVERSION="$PAUSE_VERSION" -o "$1/pause" "$src"
  strip "$1/pause"
}

stage_busybox() { # DIR
  local bb=/bin/busybox r=$1/rootfs path banner
  [ -x "$bb" ] || die "busybox: $bb missing; apt-get install busybox-static"
  banner=$("$bb" 2>&1 || true)
  banner=${banner%%$'\n'*}
  case $banner in
    "BusyBox v$BUSYBOX_VERSION "*) ;;
    *) die "busybox: $bb is not BusyBox $BUSYBOX_VERSION ($banner), the tag in images.sh" ;;
  esac
  static "$bb" || die "busybox: $bb is dynamically linked; install busybox-static (not busybox)"
  mkdir -p "$r/bin" "$r/tmp"
  chmod 1777 "$r/tmp"
  install -m 0755 "$bb" "$r/bin/busybox"
  while read -r path; do
    case $path in bin/busybox | linuxrc) ;; *) mkdir -p "$r/$(dirname "$path")" && ln -s /bin/busybox "$r/$path" ;; esac
  done < <("$bb" --list-full)
  # The tests' port-forward target (see the source for why not `nc -ll -e cat`).
  gcc -Os -Wall -Werror -static -o "$r/bin/echo-server" "$ROOT/deploy/images/busybox/echo-server.c"
  strip "$r/bin/echo-server"
  stage_etc "$r"
}

stage_tether() { # NAME DIR BIN_DIR
  local bin=$3/$1
  [ -x "$bin" ] || die "$1: no $bin; build it with: $CARGO_STATIC"
  static "$bin" || die "$1: $bin is dynamically linked and the image has no libc; build it with: $CARGO_STATIC"
  # Debug info is [profile.release]'s (debug = 1, for perf); the image keeps the symbols only: 134 MB -> 21 MB.
  strip --strip-debug -o "$2/$1" "$bin"
  chmod 0755 "$2/$1"
  stage_etc "$2"
}

# No program interpreter: nothing to load from an empty root. (grep without -q: reading to the end, it cannot
# make readelf die of SIGPIPE, which pipefail would count as a failure.)
static() { ! readelf -lW "$1" | grep 'Requesting program interpreter' >/dev/null; }

stage() { # NAME DIR [BIN_DIR]
  case $1 in
    pause) stage_pause "$2" ;;
    busybox) stage_busybox "$2" ;;
    *) [ -n "${3:-}" ] || die "$1: needs BIN_DIR"; stage_tether "$1" "$2" "$3" ;;
  esac
}

build() { # NAME [BIN_DIR]
  local name=$1 out=$CACHE/images/$1.oci.tar cf=$ROOT/deploy/images/$1/Containerfile ctx sum
  ctx=$(mktemp -d "$WORK/$name.XXXXXX")
  stage "$name" "$ctx" "${2:-}"
  sum=$(python3 "$HERE/oci-archive.py" hash "$cf" "$ctx" "$(ref "$name")")
  if [ "${TETHER_REBUILD:-0}" != 1 ] && [ -f "$out" ] && [ "$(cat "$out.inputs" 2>/dev/null)" = "$sum" ]; then
    # Not rewritten, but marked current: freshness checks (the e2e suite's) compare its mtime with the binary's.
    touch "$out"
    echo "$(ref "$name"): unchanged, $out"
  else
    rm -f "$out.inputs"
    python3 "$HERE/oci-archive.py" build "$cf" "$ctx" "$(ref "$name")" "$out"
    echo "$sum" >"$out.inputs"
  fi
  rm -rf "$ctx"
}

import_images() { # SOCKET NAME...
  local sock=$1 names=() n short listed
  shift
  [ $# -gt 0 ] || die "import: which images? (NAME... or all)"
  for n in "$@"; do
    if [ "$n" = all ]; then names+=("${TEST_IMAGES[@]}" "${TETHER_IMAGES[@]}"); continue; fi
    # A full ref is accepted too: callers such as node.sh know images by the name kubelet asks for.
    for short in "${TEST_IMAGES[@]}" "${TETHER_IMAGES[@]}"; do
      if [ "$n" = "$(ref "$short")" ]; then n=$short; fi
    done
    ref "$n" >/dev/null
    names+=("$n")
  done
  for n in "${names[@]}"; do
    [ -f "$CACHE/images/$n.oci.tar" ] ||
      die "$(ref "$n"): no archive $CACHE/images/$n.oci.tar; build it with: $(build_command "$n")"
  done
  for n in "${names[@]}"; do
    ctr --address "$sock" -n k8s.io images import "$CACHE/images/$n.oci.tar" >/dev/null ||
      die "$(ref "$n"): ctr could not import $CACHE/images/$n.oci.tar (above)"
  done
  listed=$(ctr --address "$sock" -n k8s.io images ls -q)
  for n in "${names[@]}"; do
    grep -qxF "$(ref "$n")" <<<"$listed" ||
      die "$(ref "$n"): imported but not listed by ctr; rebuild it with: TETHER_REBUILD=1 $(build_command "$n")"
    echo "$(ref "$n"): in containerd ($sock)"
  done
}

WORK=$(mktemp -d /tmp/tether-images.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
CACHE=${TETHER_CACHE:-/var/cache/tether}
case "${1:-} ${2:-}" in
  "build test")
    CACHE=${3:-$CACHE}
    mkdir -p "$CACHE/images"
    for n in "${TEST_IMAGES[@]}"; do build "$n"; done
    ;;
  "build tether")
    [ $# -ge 3 ] || die "usage: images.sh build tether BIN_DIR [CACHE]"
    CACHE=${4:-$CACHE}
    mkdir -p "$CACHE/images"
    for n in "${TETHER_IMAGES[@]}"; do build "$n" "$3"; done
    ;;
  "build tunnel-client" | "build tunnel-server" | "build controller")
    [ $# -ge 3 ] || die "usage: images.sh build $2 BIN_DIR [CACHE]"
    CACHE=${4:-$CACHE}
    mkdir -p "$CACHE/images"
    build "$2" "$3"
    ;;
  "context "*)
    [ $# -ge 3 ] || die "usage: images.sh context NAME DIR [BIN_DIR]"
    ref "$2" >/dev/null
    [ -z "$(ls -A "$3" 2>/dev/null)" ] || die "context: $3 is not empty"
    mkdir -p "$3"
    stage "$2" "$3" "${4:-}"
    echo "context of $(ref "$2") in $3: buildah build -f deploy/images/$2/Containerfile -t $(ref "$2") $3"
    ;;
  "import "*)
    shift
    import_images "$@"
    ;;
  *) sed -n '7,13p' "$0" >&2; exit 2 ;;
esac
