#!/usr/bin/env bash
# `make cluster-up`: a kind cluster running the whole platform, synced by Argo CD from this
# repository (REPO_URL at REVISION: a fork or a branch works, nothing in git is edited).
# Needs docker and kubectl; kind is the pinned release below (installed into .venv/bin, checksum
# verified, when KIND is not already that release). A private repository or fork: set GIT_TOKEN
# (and GIT_USERNAME) to give Argo CD, the pipeline's ingest step and the Katib trials read access
# to REPO_URL. `make cluster-down` deletes the cluster.
set -euo pipefail

CLUSTER="${CLUSTER:-mlstack}"
# kind, pinned: node images are built for one kind release, whose notes list them by digest
# (tests/upstream/upstream-rules.json). The checksum is the release's kind-linux-amd64.sha256sum.
KIND_VERSION="v0.33.0"
KIND_SHA256_LINUX_AMD64="aee6151561422756b764a4ae28e7f44cda5af5a9eead3cc9985112b1de8d8e0d"
KIND="${KIND:-.venv/bin/kind}"
# kind v0.33.0's node image for Kubernetes 1.37.0
NODE_IMAGE="kindest/node:v1.37.0@sha256:a1ed56cfb0e7b93589bdf97c8cd566405a265939e3620fc4f5de89adff580ae5"
REPO_URL="${REPO_URL:-https://github.com/mlstack/mlstack.git}"
REVISION="${REVISION:-main}"
MLSTACK="${MLSTACK:-.venv/bin/mlstack}"
IMAGES="${IMAGES:-scripts/images.sh}"
TIMEOUT="${TIMEOUT:-1800}"

kind_release() { "$KIND" version 2>/dev/null | awk '{print $2}'; }
if [ "$(kind_release)" != "$KIND_VERSION" ]; then
  if [ "$KIND" != ".venv/bin/kind" ]; then
    echo "KIND=$KIND is kind $(kind_release), not $KIND_VERSION: the node image is built for $KIND_VERSION" >&2
    exit 1
  fi
  if [ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]; then
    echo "install kind $KIND_VERSION and set KIND to it (this script downloads it for Linux x86_64 only)" >&2
    exit 1
  fi
  download="$(mktemp)"
  curl -fsSL --retry 3 -o "$download" \
    "https://github.com/kubernetes-sigs/kind/releases/download/${KIND_VERSION}/kind-linux-amd64"
  echo "${KIND_SHA256_LINUX_AMD64}  ${download}" | sha256sum --check --quiet
  install -D -m 0755 "$download" "$KIND"
  rm -f "$download"
fi

for tool in docker kubectl openssl; do
  command -v "$tool" >/dev/null || { echo "cluster-up needs $tool" >&2; exit 1; }
done

if ! "$KIND" get clusters | grep -qx "$CLUSTER"; then
  "$KIND" create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --wait 180s
fi
kubectl config use-context "kind-$CLUSTER"

# the images built from this repository (`make images`: named as mlstack/settings.py names them,
# which is how the manifests name them), built by docker for kind and loaded into the node
CONTAINER_ENGINE=docker "$IMAGES" build
"$IMAGES" list | while read -r image; do
  "$KIND" load docker-image --name "$CLUSTER" "$image"
done

# Argo CD, at its pinned version
kubectl create namespace argocd --dry-run=client -o yaml | kubectl apply -f -
kubectl apply --server-side --force-conflicts -k argocd/install
kubectl -n argocd rollout status deployment/argocd-repo-server --timeout=600s
kubectl -n argocd rollout status statefulset/argocd-application-controller --timeout=600s

# dev credentials: generated here, kept in the cluster only (manifests/platform/dev/secret-store.yaml)
kubectl create namespace mlstack-secrets --dry-run=client -o yaml | kubectl apply -f -
secret() {  # name key=value...: created once, never overwritten
  local name="$1"; shift
  kubectl -n mlstack-secrets get secret "$name" >/dev/null 2>&1 && return 0
  local args=()
  for pair in "$@"; do args+=("--from-literal=$pair"); done
  kubectl -n mlstack-secrets create secret generic "$name" "${args[@]}"
}
pg_password="$(openssl rand -hex 24)"
secret mlstack-s3 "access-key-id=mlstack-$(openssl rand -hex 6)" "secret-access-key=$(openssl rand -hex 24)"
secret mlstack-mlflow-postgres "password=$pg_password" \
  "uri=postgresql+psycopg2://mlflow:${pg_password}@mlflow-postgres.mlops.svc.cluster.local:5432/mlflow"
# Feast's stores (manifests/platform/dev: the feast database on that Postgres, the online Redis)
feast_pg_password="$(openssl rand -hex 24)"
redis_password="$(openssl rand -hex 24)"
secret mlstack-feast "registry-password=$feast_pg_password" "redis-password=$redis_password" \
  "registry-uri=postgresql+psycopg://feast:${feast_pg_password}@mlflow-postgres.mlops.svc.cluster.local:5432/feast" \
  "redis-connection=feast-redis.mlops.svc.cluster.local:6379,password=${redis_password}"
secret mlstack-github "dispatch-token=${GITHUB_DISPATCH_TOKEN:-none}"
# what Alertmanager sends the drift relay and the relay expects (manifests/monitoring)
secret mlstack-alert-relay "webhook-token=$(openssl rand -hex 32)"
# the in-cluster clones of REPO_URL (the pipeline's ingest step, the Katib trials) read it with
# this token (manifests/platform's git-credentials ExternalSecrets); empty for a public repository.
# Applied each time: it is the caller's, not generated here.
kubectl -n mlstack-secrets create secret generic mlstack-git --dry-run=client -o yaml \
  --from-literal=username="${GIT_USERNAME:-x-access-token}" --from-literal=token="${GIT_TOKEN:-}" |
  kubectl apply --server-side -f -

# a private repository or fork: Argo CD reads REPO_URL with these credentials (a repository
# Secret, Argo CD's declarative setup; kept in the cluster only). Created before the first sync,
# since nothing else can come from git until Argo CD can clone it.
if [ -n "${GIT_TOKEN:-}" ]; then
  kubectl -n argocd create secret generic mlstack-repository --dry-run=client -o yaml \
    --from-literal=type=git --from-literal=url="$REPO_URL" \
    --from-literal=username="${GIT_USERNAME:-x-access-token}" --from-literal=password="$GIT_TOKEN" |
    kubectl label --local -f - -o yaml argocd.argoproj.io/secret-type=repository |
    kubectl apply --server-side -f -
fi

# the app-of-apps: everything else comes from git, wave by wave
kubectl apply --server-side -f argocd/platform/project.yaml
"$MLSTACK" root-app --repo-url "$REPO_URL" --revision "$REVISION" | kubectl apply --server-side -f -

# the platform project's Applications (the serving ones wait for a promoted model, and
# production for a manual sync)
expected="$(kubectl kustomize argocd/platform | grep -c '^kind: Application$')"
echo "waiting for the ${expected} platform Applications to be Synced and Healthy (up to ${TIMEOUT}s)"
deadline=$((SECONDS + TIMEOUT))
until [ "$SECONDS" -ge "$deadline" ]; do
  states="$(kubectl -n argocd get applications.argoproj.io -o jsonpath='{range .items[?(@.spec.project=="platform")]}{.metadata.name}={.status.sync.status}/{.status.health.status}{"\n"}{end}')"
  pending="$(grep -v '=Synced/Healthy$' <<<"$states" || true)"
  if [ -z "$pending" ] && [ "$(grep -c . <<<"$states")" -ge "$expected" ]; then
    echo "platform up: every platform Application Synced and Healthy"
    exit 0
  fi
  sleep 20
done
echo "timed out; not yet Synced/Healthy:" >&2
echo "$pending" >&2
exit 1
