#!/usr/bin/env bash
# `make images`: the training, predictor, MLflow and Redis images, built from their Dockerfiles and tagged
# as mlstack/settings.py names them (the one source of truth the IR, the manifests, cluster-up and
# the image workflow follow). docs/images.md.
#
# The engine is docker when its daemon answers, else podman (CONTAINER_ENGINE=podman|docker
# chooses). Each Dockerfile's base is `ARG BASE_IMAGE` (default: the pinned upstream python image);
# when that cannot be pulled (no registry reachable) the images are built on a stand-in made from
# Debian's own packages, once, and reused while it is present:
#   debootstrap --variant=minbase bookworm → localhost/debian:bookworm-min (import)
#   + Debian's python3 and pip (scripts/base/Dockerfile) → localhost/mlstack/python:3.11-bookworm-debian
# BASE_IMAGE=<image> forces a base.
#
# Each build ends with the image's SBOM (CycloneDX JSON), made inside the built image from its
# installed environment by CycloneDX's tool (locks/sbom.txt, hash-checked, mounted read-only, never
# installed into the image): .mlstack/sbom/<key>.cdx.json. The image workflow scans it with Trivy.
#
# usage: scripts/images.sh [build] [training|predictor|transformer|mlflow|redis]...  build (all by default) + SBOMs
#        scripts/images.sh sbom [KEY|KEY=IMAGE]...   the SBOMs of built (or pulled) images
#        scripts/images.sh list           the images' names, one a line
#        scripts/images.sh names [SHA]    key=image lines (key_repository=..., key_sha=... with SHA)
#        scripts/images.sh engine         the engine builds use
#        scripts/images.sh tools          podman, runc, debootstrap and containers.conf (as root),
#                                         unless a docker daemon answers; `make tools` runs it
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_IMAGE="localhost/debian:bookworm-min"
STANDIN_IMAGE="localhost/mlstack/python:3.11-bookworm-debian"
CONTAINERS_CONF="${CONTAINERS_CONF:-/etc/containers/containers.conf}"
STATE=".mlstack"
SBOM_DIR="$STATE/sbom"
SBOM_TOOL="$STATE/sbom-tool"
KEYS=(training predictor transformer mlflow redis)
declare -A DOCKERFILE=(
  [training]=components/Dockerfile
  [predictor]=serving/Dockerfile
  [transformer]=serving/transformer.Dockerfile
  [mlflow]=manifests/platform/mlflow-image/Dockerfile
  [redis]=manifests/platform/redis-image/Dockerfile
)

die() { echo "images: $*" >&2; exit 1; }
say() { echo "images: $*" >&2; }

# key=image, one a line, from mlstack/settings.py (stdlib only: no virtual environment needed)
names() {
  PYTHONPATH=. "$PYTHON" -c '
import sys
from mlstack.settings import DEFAULTS
sha = sys.argv[1] if len(sys.argv) > 1 else ""
for key, image in DEFAULTS.images.items():
    repository = image.rsplit(":", 1)[0]
    print(f"{key}={image}")
    print(f"{key}_repository={repository}")
    if sha:
        print(f"{key}_sha={repository}:{sha}")
' "$@"
}

image_of() { names | sed -n "s/^$1=//p"; }

list() { local key; for key in "${KEYS[@]}"; do image_of "$key"; done; }

docker_daemon() {  # a docker daemon (not podman's Docker-compatible socket) answers
  local info
  command -v docker >/dev/null && info="$(timeout 30 docker version 2>/dev/null)" && ! grep -qi podman <<<"$info"
}

engine() {
  if [ -n "${CONTAINER_ENGINE:-}" ]; then
    command -v "$CONTAINER_ENGINE" >/dev/null || die "CONTAINER_ENGINE=$CONTAINER_ENGINE is not installed"
    echo "$CONTAINER_ENGINE"
  elif docker_daemon; then
    echo docker
  elif command -v podman >/dev/null; then
    echo podman
  else
    die "no container engine: neither a docker daemon nor podman; \`make tools\` installs podman (as root)"
  fi
}

write_containers_conf() {
  local wanted
  wanted='# written by mlstack (scripts/images.sh tools): runc with cgroupfs (crun refuses a hybrid
# cgroup layout), and default ulimits below the hard limits (podman'"'"'s defaults can fail setrlimit)
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"'
  if [ ! -e "$CONTAINERS_CONF" ]; then
    mkdir -p "$(dirname "$CONTAINERS_CONF")"
    printf '%s\n' "$wanted" >"$CONTAINERS_CONF"
    say "wrote $CONTAINERS_CONF"
  elif [ "$(cat "$CONTAINERS_CONF")" != "$wanted" ]; then
    for setting in 'cgroup_manager = "cgroupfs"' 'runtime = "runc"' 'default_ulimits'; do
      grep -q "^[[:space:]]*${setting}" "$CONTAINERS_CONF" ||
        say "warning: $CONTAINERS_CONF is not ours and lacks ${setting}; left unchanged (docs/images.md)"
    done
  fi
}

tools() {
  if [ "${CONTAINER_ENGINE:-}" = docker ] || { [ -z "${CONTAINER_ENGINE:-}" ] && docker_daemon; }; then
    return 0
  fi
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || [ -x /usr/sbin/runc ] || missing+=(runc)
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
  if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${missing[*]}: run \`make tools\` as root"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      podman runc conmon containernetworking-plugins iptables uidmap slirp4netns fuse-overlayfs \
      debootstrap debian-archive-keyring ca-certificates
  fi
  if [ "$(id -u)" = 0 ]; then
    write_containers_conf
  fi
}

exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }
image_id() { "$ENGINE" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# podman: host networking and the machine's CA bundle, so pip in a build trusts what pip here does
build_args() {
  if [ "$ENGINE" = podman ]; then
    printf '%s\n' --network host
    [ -d /etc/ssl/certs ] && printf '%s\n' -v /etc/ssl/certs:/etc/ssl/certs:ro
  fi
  return 0
}

qualified() {  # docker.io/library/python:3.11 for python:3.11 (podman wants a registry)
  case "$1" in
    */*) case "${1%%/*}" in *.*|*:*|localhost) echo "$1" ;; *) echo "docker.io/$1" ;; esac ;;
    *) echo "docker.io/library/$1" ;;
  esac
}

standin() {  # the Debian stand-in base: built once, reused while present
  exists "$STANDIN_IMAGE" && return 0
  local start=$SECONDS
  if ! exists "$DEBIAN_IMAGE"; then
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] ||
      die "the stand-in base needs debootstrap: run \`make tools\` as root"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root to build the stand-in base"
    local rootfs
    rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/mlstack-rootfs.XXXXXX")"
    say "debootstrap bookworm (minbase) from $DEBIAN_MIRROR"
    if ! PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" \
      >"$STATE/debootstrap.log" 2>&1; then
      rm -rf "$rootfs"
      die "debootstrap failed; see $STATE/debootstrap.log"
    fi
    tar -C "$rootfs" -c . | "$ENGINE" import - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$rootfs"
  fi
  # apt only (no pip): without the machine's CA bundle mounted, which ca-certificates would
  # write into
  local args=()
  [ "$ENGINE" = podman ] && args=(--network host)
  "$ENGINE" build "${args[@]}" --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" -t "$STANDIN_IMAGE" \
    -f scripts/base/Dockerfile scripts/base
  say "stand-in base $STANDIN_IMAGE built in $((SECONDS - start)) s"
}

declare -A BASE_FOR=()
base_for() {  # the base to build Dockerfile $1 on, in BASE
  if [ -n "${BASE_IMAGE:-}" ]; then
    BASE="$BASE_IMAGE"
    return
  fi
  local upstream
  upstream="$(sed -n 's/^ARG BASE_IMAGE=//p' "$1")"
  [ -n "$upstream" ] || die "$1 has no ARG BASE_IMAGE=<image>"
  if [ -z "${BASE_FOR[$upstream]:-}" ]; then
    local image
    image="$(qualified "$upstream")"
    if exists "$image" || "$ENGINE" pull -q "$image" >/dev/null 2>&1; then
      BASE_FOR[$upstream]="$image"
    else
      say "cannot pull $image: building on the Debian stand-in $STANDIN_IMAGE"
      standin
      BASE_FOR[$upstream]="$STANDIN_IMAGE"
    fi
  fi
  BASE="${BASE_FOR[$upstream]}"
}

build() {
  local keys=("$@")
  [ "${#keys[@]}" -gt 0 ] || keys=("${KEYS[@]}")
  ENGINE="$(engine)"
  mkdir -p "$STATE"
  # one build at a time on this machine: concurrent test sessions share the image store
  if command -v flock >/dev/null; then
    exec 9>"$STATE/images.lock"
    flock 9
  fi
  local args key dockerfile image start before after
  mapfile -t args < <(build_args)
  for key in "${keys[@]}"; do
    dockerfile="${DOCKERFILE[$key]:-}"
    [ -n "$dockerfile" ] || die "unknown image '$key' (one of: ${KEYS[*]})"
    image="$(image_of "$key")"
    base_for "$dockerfile"
    start=$SECONDS
    before="$(image_id "$image")"
    say "building $image from $dockerfile on $BASE with $ENGINE"
    "$ENGINE" build "${args[@]}" --build-arg "BASE_IMAGE=$BASE" -f "$dockerfile" -t "$image" .
    say "$image built in $((SECONDS - start)) s"
    sbom_of "$key" "$image"
    after="$(image_id "$image")"
    # the image this build replaced, unless a container still uses it (rmi then refuses)
    if [ -n "$before" ] && [ "$before" != "$after" ]; then
      "$ENGINE" rmi "$before" >/dev/null 2>&1 || true
    fi
  done
}

# CycloneDX's Python tool, installed once (again when locks/sbom.txt changes) by the pip of image
# $1 (its Python, so compiled wheels match) into $SBOM_TOOL, every file checked against the lock
sbom_tool() {
  if [ -f "$SBOM_TOOL/sbom.txt" ] && cmp -s locks/sbom.txt "$SBOM_TOOL/sbom.txt"; then
    return 0
  fi
  local args=()
  if [ "$ENGINE" = podman ]; then
    args=(--network host)
    [ -d /etc/ssl/certs ] && args+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
  fi
  rm -rf "$SBOM_TOOL"
  mkdir -p "$SBOM_TOOL/lib"
  "$ENGINE" run --rm "${args[@]}" --user 0 --entrypoint pip \
    -v "$PWD/locks/sbom.txt:/tmp/sbom.txt:ro" -v "$PWD/$SBOM_TOOL/lib:/out" "$1" \
    install --quiet --no-cache-dir --require-hashes --no-deps --target /out -r /tmp/sbom.txt >&2 ||
    die "could not install the SBOM tool (locks/sbom.txt)"
  cp locks/sbom.txt "$SBOM_TOOL/sbom.txt"
}

# The SBOM of image $2 (key $1): cyclonedx-py run by the image's own Python as the image's user,
# offline, over that interpreter's environment (the tool's path is not in it). --no-validate: the
# tool's own JSON-schema check takes about a minute an image here; the tests read the document.
SBOM_PY='import runpy, sys
sys.path.insert(0, "/opt/sbom-tool")
sys.argv = ["cyclonedx-py", "environment", "--output-format", "JSON", "--output-reproducible",
            "--no-validate", "--output-file", "-", sys.executable]
runpy.run_module("cyclonedx_py", run_name="__main__", alter_sys=True)'
# The previous SBOM is replaced only by a whole CycloneDX document: an engine that exits 0 with
# nothing on stdout (a stub, a broken attach) would otherwise leave an empty file that Trivy
# scans as an image with nothing in it.
sbom_of() {
  local out="$SBOM_DIR/$1.cdx.json"
  sbom_tool "$2"
  mkdir -p "$SBOM_DIR"
  "$ENGINE" run --rm --network none --entrypoint python -v "$PWD/$SBOM_TOOL/lib:/opt/sbom-tool:ro" \
    "$2" -c "$SBOM_PY" >"$out.tmp" || { rm -f "$out.tmp"; die "SBOM of $2 failed"; }
  if ! python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["bomFormat"] != "CycloneDX")' \
    "$out.tmp" 2>/dev/null; then
    rm -f "$out.tmp"
    die "SBOM of $2: the tool exited 0 without writing a CycloneDX document"
  fi
  mv "$out.tmp" "$out"
  say "SBOM of $2: $out"
}

sbom() {  # each argument: a key (its image as built here) or key=image (pulled when absent)
  local keys=("$@") key image
  [ "${#keys[@]}" -gt 0 ] || keys=("${KEYS[@]}")
  ENGINE="$(engine)"
  mkdir -p "$STATE"
  if command -v flock >/dev/null; then  # the build's lock: one writer of the SBOM tool and files
    exec 9>"$STATE/images.lock"
    flock 9
  fi
  for key in "${keys[@]}"; do
    image="${key#*=}"
    key="${key%%=*}"
    [ -n "${DOCKERFILE[$key]:-}" ] || die "unknown image '$key' (one of: ${KEYS[*]})"
    [ "$image" != "$key" ] || image="$(image_of "$key")"
    exists "$image" || "$ENGINE" pull -q "$image" >/dev/null ||
      die "$image is neither built here nor pullable: scripts/images.sh build $key"
    sbom_of "$key" "$image"
  done
}

command="${1:-build}"
[ "$#" -gt 0 ] && shift
case "$command" in
  build) build "$@" ;;
  sbom) sbom "$@" ;;
  names) names "$@" ;;
  list) list ;;
  engine) engine ;;
  tools) tools ;;
  training|predictor|transformer|mlflow|redis) build "$command" "$@" ;;
  *) die "unknown command '$command' (build, sbom, list, names, engine, tools)" ;;
esac
