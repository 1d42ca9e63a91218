#!/usr/bin/env bash
# `make locks`: the images' hashed requirement locks, locks/<image>.txt, refreshed from their
# requirement sets and constraints.txt. Each lock is the image's whole dependency closure, every
# entry pinned to the constraints.txt version with the sha256 of each of its files on PyPI; the
# Dockerfiles install it with `pip install --require-hashes --no-deps`. docs/images.md.
#
#   training   pyproject.toml's dependencies + the platform, pipeline and features extras, and
#              locks/build.in
#   predictor  pyproject.toml's dependencies + the serving extra, and locks/build.in, with
#              locks/predictor-overrides.txt as uv overrides (kserve's requirements the predictor
#              never imports, each removed by a marker that never holds)
#   transformer  pyproject.toml's dependencies + the serving and features extras, and locks/build.in
#              with the predictor's overrides (the KServe Feast transformer: online features in
#              front of the predictor; feast imports PIL only for image features)
#   mlflow     locks/mlflow.in
#   sbom       locks/sbom.in (the SBOM tool scripts/images.sh mounts into each built image)
#   build      locks/build.in (the build backend, installed before the training and predictor locks)
#
# The target is the images' Python, 3.11 on x86_64 Linux (glibc); markers are evaluated for it.
# tests/unit/test_locks.py fails when a lock disagrees with constraints.txt or with its set.
#
# usage: scripts/locks.sh [training|predictor|transformer|mlflow|sbom|build]...   (all by default)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
UV_VERSION=0.13.8
TOOLS=".mlstack/locktools"
UV="$TOOLS/bin/uv"
KEYS=(training predictor transformer mlflow sbom build)

die() { echo "locks: $*" >&2; exit 1; }

if [ ! -x "$UV" ] || [ "$("$UV" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/pip" install --quiet "uv==$UV_VERSION"
fi

inputs() {
  case "$1" in
    training) echo pyproject.toml --extra platform --extra pipeline --extra features locks/build.in ;;
    predictor) echo pyproject.toml --extra serving locks/build.in --override locks/predictor-overrides.txt ;;
    transformer) echo pyproject.toml --extra serving --extra features locks/build.in \
      --override locks/predictor-overrides.txt ;;
    mlflow) echo locks/mlflow.in ;;
    sbom) echo locks/sbom.in ;;
    build) echo locks/build.in ;;
    *) die "unknown lock '$1' (one of: ${KEYS[*]})" ;;
  esac
}

keys=("$@")
[ "${#keys[@]}" -gt 0 ] || keys=("${KEYS[@]}")
for key in "${keys[@]}"; do
  read -r -a args <<<"$(inputs "$key")"
  # --no-config: PyPI itself (not a machine's pip.conf or find-links), so the hashes are the
  # published files' hashes
  "$UV" pip compile --quiet --no-config --index-url https://pypi.org/simple \
    "${args[@]}" -c constraints.txt \
    --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --custom-compile-command "scripts/locks.sh $key" \
    -o "locks/$key.txt"
  echo "locks: locks/$key.txt ($(grep -c '^[A-Za-z0-9]' "locks/$key.txt") packages)" >&2
done
