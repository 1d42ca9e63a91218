"""Extract the rules tests/unit/test_upstream_rules.py checks our manifests against, from the
upstream projects' own files at the pinned tags, into tests/upstream/upstream-rules.json.

The controllers that admit our objects decide things no schema says: Knative's webhook masks
PodSpec fields behind feature flags and resolves image tags, Argo CD judges an HPA's health and
stops a sync on it, kind's nodes hold images no registry has. The test cannot reach GitHub, so it
reads this file: only the facts it needs (field names and the feature states that allow them, flag
names and defaults, constants, test tables, digests), each with its provenance (repository, tag,
commit, path, line range, sha256 of the upstream file). No upstream file or code is kept.

Where the rule is Go logic (Knative's field masks), what is recorded is its data: per mask, each
field it copies and the condition under which it copies it, as a small condition tree (feature
flag states, "field set", "field false", "field equals"); a Go form this script does not know
stops it, so a changed rule cannot be recorded wrongly.

Run it with local git clones of the upstream repositories laid out as ``ROOT/<owner>+<name>/repo``
(``git clone --bare`` works), and kind's release notes saved from the release page (kind's tags
after v0.32.0 were not in the clone read; the notes are not in the repository anyway):

    python tools/upstream_rules.py --mirror-root ROOT --kind-release-notes NOTES.md \\
        > tests/upstream/upstream-rules.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

KNATIVE_TAG = "knative-v1.21.1"
ARGOCD_TAG = "v3.5.1"  # pinned v3.5.2: the files read are unchanged apart from an import path
KIND_DOCS_TAG = "v0.32.0"  # quick-start.md is identical at v0.33.0-alpha
KIND_RELEASE = "v0.33.0"
KIND_RELEASE_URL = f"https://github.com/kubernetes-sigs/kind/releases/tag/{KIND_RELEASE}"

# the masks ValidatePodSpec applies to a PodSpec and the structs below it (k8s_validation.go)
MASKS = (
    "PodSpecMask", "PodSecurityContextMask", "ContainerMask", "SecurityContextMask",
    "CapabilitiesMask", "ProbeMask", "HandlerMask", "HTTPGetActionMask", "TCPSocketActionMask",
    "ExecActionMask", "ContainerPortMask", "EnvVarMask", "ResourceRequirementsMask",
    "VolumeMountMask",
)  # fmt: skip

Fact = dict[str, Any]


class Upstream:
    def __init__(self, root: Path, repo: str, tag: str) -> None:
        self.git = root / repo.replace("/", "+") / "repo"
        if (self.git / ".git").is_dir():
            self.git = self.git / ".git"
        self.repo, self.tag = repo, tag
        self.commit = self._git("rev-parse", f"{tag}^{{commit}}").decode().strip()
        self.read: dict[str, str] = {}

    def _git(self, *args: str) -> bytes:
        return subprocess.run(
            ["git", "-C", str(self.git), *args], check=True, capture_output=True
        ).stdout

    def show(self, path: str) -> str:
        data = self._git("show", f"{self.commit}:{path}")
        self.read[path] = hashlib.sha256(data).hexdigest()
        return data.decode()

    def where(self, path: str, start: int, end: int) -> Fact:
        """Provenance of the characters start..end of ``path`` (as returned by ``show``)."""
        text = self.show(path)
        first = text.count("\n", 0, start) + 1
        last = text.count("\n", 0, max(start, end - 1)) + 1
        return {
            "repository": self.repo,
            "tag": self.tag,
            "commit": self.commit,
            "path": path,
            "lines": [first, last],
            "sha256": self.read[path],
        }

    def sources(self) -> Fact:
        return {"repository": self.repo, "tag": self.tag, "commit": self.commit, "files": self.read}


def fact(value: Any, *where: Fact) -> Fact:
    return {"value": value, "from": list(where)}


def search(pattern: str, text: str, flags: int = 0) -> re.Match[str]:
    found = re.search(pattern, text, flags)
    if not found:
        sys.exit(f"upstream text changed: no match for {pattern!r}")
    return found


def go_func(source: str, name: str) -> tuple[str, int, int]:
    """The body of the Go function ``name`` (braces matched), and where the function starts and
    ends in ``source``."""
    match = search(rf"^func (?:\([^)]*\) )?{name}(?:\[[^\]]*\])?\(", source, re.M)
    start = source.index("{\n", match.end()) + 2  # the body opens the first line ending in {
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        i += 1
    return source[start : i - 1], match.start(), i


# --- Knative Serving: config-features ---------------------------------------------------------

FEATURES = "pkg/apis/config/features.go"


def knative_features(serving: Upstream) -> Fact:
    """Per Features field: its config-features key, its default and the values its parser
    accepts (case-insensitively, strings.EqualFold); the Flag constants' values."""
    go = serving.show(FEATURES)
    flags_at = search(r"^const \(\n(?:.*\n)*?\)", go, re.M)
    flags = dict(re.findall(r"^\s+(\w+)\s+Flag = \"(\w+)\"", flags_at[0], re.M))
    consts = dict(re.findall(r"^\s+(\w+)\s+= \"([^\"]+)\"$", go, re.M))
    defaults, d0, d1 = go_func(go, "defaultFeaturesConfig")
    parsers, p0, p1 = go_func(go, "NewFeaturesConfigFromMap")
    accepts, where = {}, []
    for fn in ("asFlag", "asSecurePodDefaultsFlag"):
        body, a0, a1 = go_func(go, fn)
        listed = search(r"\[\]Flag\{([^}]*)\}", body)[1]
        accepts[fn] = [flags[f.strip()] for f in listed.split(",")]
        where.append(serving.where(FEATURES, a0, a1))
    default = {f: flags[v] for f, v in re.findall(r"^\s+(\w+):\s+(\w+),$", defaults, re.M)}
    table = {}
    for fn, key, field in re.findall(
        r"(asFlag|asSecurePodDefaultsFlag)\((\w+|\"[^\"]+\"), &nc\.(\w+)\)", parsers
    ):
        key = key.strip('"') if key.startswith('"') else consts[key]
        table[field] = {"key": key, "default": default[field], "accepts": accepts[fn]}
    if len(table) < 30 or set(default) - set(table):
        sys.exit(f"{FEATURES}: {len(table)} flags; defaults without a key: {set(default) - set(table)}")  # fmt: skip
    return {
        "flags": fact(flags, serving.where(FEATURES, flags_at.start(), flags_at.end())),
        "fields": fact(
            table, serving.where(FEATURES, d0, d1), serving.where(FEATURES, p0, p1), *where
        ),
    }


# --- Knative Serving: the webhook's field masks -----------------------------------------------

FIELDMASK = "pkg/apis/serving/fieldmask.go"


def mask_condition(cond: str, flags: dict[str, str], local: dict[str, list[str]]) -> Fact:
    """A Go condition of fieldmask.go as data; an unknown form stops the extraction."""
    cond = cond.strip()
    if " || " in cond:
        return {"any": [mask_condition(c, flags, local) for c in cond.split(" || ")]}
    if " && " in cond:
        return {"all": [mask_condition(c, flags, local) for c in cond.split(" && ")]}
    features = r"(?:cfg|config\.FromContextOrDefaults\(ctx\))\.Features\.(\w+)"
    if m := re.fullmatch(rf"{features} ([!=]=) config\.(\w+)", cond):
        return {"feature": m[1], "in" if m[2] == "==" else "not_in": [flags[m[3]]]}
    if m := re.fullmatch(rf"slices\.Contains\(\[\]config\.Flag\{{([^}}]*)\}}, {features}\)", cond):
        listed = [flags[f.strip().removeprefix("config.")] for f in m[1].split(",")]
        return {"feature": m[2], "in": listed}
    if cond == "in == nil":
        return {"never": True}  # the mask of no object: nothing to allow
    if m := re.fullmatch(r"in\.(\w+) != nil", cond):
        return {"set": [m[1]]}
    if m := re.fullmatch(r"!\*in\.(\w+)", cond):
        return {"false": [m[1]]}
    if m := re.fullmatch(r"(\w+) == corev1\.SeccompProfileType(\w+)", cond):
        # corev1.SeccompProfileTypeX = "X" (k8s.io/api core/v1 types.go)
        return {"equals": local[m[1]], "value": m[2]}
    if m := re.fullmatch(r"slices\.Equal\(in\.(\w+), \[\]corev1\.Capability\{([^}]*)\}\)", cond):
        return {"equals": [m[1]], "value": [c.strip().strip('"') for c in m[2].split(",")]}
    sys.exit(f"{FIELDMASK}: condition not understood: {cond}")


def mask_rules(body: str, flags: dict[str, str]) -> list[Fact]:
    """The fields a mask function copies, each with the condition it is copied under: the
    enclosing ifs (an else negates), and the early ``return out``s above it."""
    stack: list[tuple[str, bool]] = []  # (condition, negated)
    guards: list[tuple[str, bool]] = []  # early `return out`: what the rest of the body needs
    local: dict[str, list[str]] = {}
    opened: list[list[str]] = []  # statements seen in each open block
    rules: list[Fact] = []
    for line in (raw.strip() for raw in body.splitlines()):
        if not line or line.startswith("//"):
            continue
        if m := re.fullmatch(r"(?:\} else )?if (.*) \{", line):
            if line.startswith("}"):
                stack.pop(), opened.pop()
            stack.append((m[1], False))
            opened.append([])
        elif line == "} else {":
            cond, _ = stack.pop()
            opened.pop()
            stack.append((cond, True))
            opened.append([])
        elif line in ("}", "})"):
            cond, neg = stack.pop()
            statements = opened.pop()
            if statements == ["return out"] and cond != "literal":
                guards.append((cond, not neg))
        elif m := re.fullmatch(r"out\.(\w+) = (.*)", line):
            if m[2].endswith("{"):  # a composite literal: its closing brace ends no block
                stack.append(("literal", False))
                opened.append([])
            if m[2] in ("nil", '""', "false"):  # cleared: not copied
                continue
            conds = [s for s in stack if s[0] != "literal"] + guards
            when = [mask_condition(c, flags, local) for c, _ in conds]
            when = [{"not": w} if neg else w for w, (_, neg) in zip(when, conds, strict=True)]
            rules.append({"field": m[1], "when": {"all": when}})
        elif m := re.fullmatch(r"(\w+) := in\.([\w.]+)", line):
            local[m[1]] = m[2].split(".")
        elif opened:
            opened[-1].append(line)
    return rules


def knative_field_masks(serving: Upstream, flags: dict[str, str]) -> Fact:
    go = serving.show(FIELDMASK)
    masks = {}
    for name in MASKS:
        body, start, end = go_func(go, name)
        masks[name] = fact(mask_rules(body, flags), serving.where(FIELDMASK, start, end))
    return masks


# --- Knative Serving: ConfigMaps, tag resolution, HPAs, docs ----------------------------------


def config_map(up: Upstream, path: str) -> Fact:
    """A ConfigMap's name, namespace and its data as Knative reads it (the `_example` key is
    documentation: no setting)."""
    text = up.show(path)
    [doc] = [d for d in yaml.safe_load_all(text) if d]
    data = {k: v for k, v in (doc.get("data") or {}).items() if k != "_example"}
    meta = doc["metadata"]
    value = {"name": meta["name"], "namespace": meta["namespace"], "data": data}
    return fact(value, up.where(path, 0, len(text)))


def registries_skipping(serving: Upstream) -> Fact:
    path = "pkg/deployment/config.go"
    go = serving.show(path)
    key = search(r'registriesSkippingTagResolvingKey = "([^"]+)"', go)
    default = search(r"RegistriesSkippingTagResolving: sets\.New\(([^)]*)\)", go)
    return fact(
        {"key": key[1], "default": [s.strip().strip('"') for s in default[1].split(",")],
         "parsed_as": "comma-separated, spaces trimmed (knative.dev/pkg AsStringSet)"},
        serving.where(path, key.start(), key.end()),
        serving.where(path, default.start(), default.end()),
    )  # fmt: skip


def tag_resolution(serving: Upstream) -> Fact:
    """resolve.go's Resolve: a reference with a digest is kept as is; a tag on a registry in
    registries-skipping-tag-resolving is left alone; any other tag is looked up."""
    path = "pkg/reconciler/revision/resolve.go"
    body, start, end = go_func(serving.show(path), "Resolve")
    for needed in ("name.NewDigest(image", "registriesToSkip.Has(tag.Registry.RegistryStr())"):
        if needed not in body:
            sys.exit(f"{path}: Resolve no longer has {needed}")
    value = {"digest_kept": True, "skipped_registry_tag_kept": True, "other_tag_looked_up": True}
    return fact(value, serving.where(path, start, end))


def hpas(up: Upstream, path: str) -> list[Fact]:
    """Each HorizontalPodAutoscaler of a manifest: kind, name, namespace and spec."""
    text = up.show(path)
    cuts = [0] + [m.end() for m in re.finditer(r"(?m)^---[ \t]*$", text)] + [len(text)]
    found = []
    for start, end in zip(cuts, cuts[1:], strict=False):
        doc = yaml.safe_load(text[start:end].removesuffix("---"))
        if doc and doc.get("kind") == "HorizontalPodAutoscaler":
            meta = doc["metadata"]
            obj = {"apiVersion": doc["apiVersion"], "kind": doc["kind"],
                   "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                   "spec": doc["spec"]}  # fmt: skip
            found.append(fact(obj, up.where(path, start, end)))
    return found


def kourier_home(serving: Upstream) -> Fact:
    path = "docs/resources-overview.md"
    m = search(r"\[Kourier\]\((https://github\.com/[\w-]+/net-kourier)\)", serving.show(path))
    return fact(m[1], serving.where(path, m.start(), m.end()))


# --- Argo CD ----------------------------------------------------------------------------------

HEALTH = "gitops-engine/pkg/health"


def hpa_health_rule(argocd: Upstream) -> Fact:
    path = f"{HEALTH}/health_hpa.go"
    go = argocd.show(path)
    degraded, d0, d1 = go_func(go, "isDegraded")
    healthy, h0, h1 = go_func(go, "isHealthy")
    pairs = re.findall(r'\{Type: "(\w+)", Reason: "(\w+)"\}', degraded)
    types = search(r"healthyConditionTypes := \[\]string\{([^}]*)\}", healthy)[1]
    return fact(
        {"degraded": [list(p) for p in pairs],
         "healthy_types": [t.strip().strip('"') for t in types.split(",")],
         "otherwise": "Progressing"},
        argocd.where(path, d0, d1), argocd.where(path, h0, h1),
    )  # fmt: skip


def hpa_health_cases(argocd: Upstream) -> list[Fact]:
    """health_test.go's TestHPA: per testdata file, the HPA's conditions as Argo CD reads them
    (autoscaling/v2; an autoscaling/v1 object carries them in its conditions annotation) and the
    health upstream expects."""
    path = f"{HEALTH}/health_test.go"
    go = argocd.show(path)
    body, start, _ = go_func(go, "TestHPA")
    offset = go.index(body, start)
    cases = []
    for m in re.finditer(
        r'assertAppHealth\(t, "\./testdata/(hpa-[\w-]+\.yaml)", HealthStatus(\w+)\)', body
    ):
        data = f"{HEALTH}/testdata/{m[1]}"
        text = argocd.show(data)
        obj = yaml.safe_load(text)
        conditions = obj.get("status", {}).get("conditions")
        if obj["apiVersion"] == "autoscaling/v1":
            notes = obj["metadata"].get("annotations", {})
            note = notes.get("autoscaling.alpha.kubernetes.io/conditions")
            conditions = json.loads(note) if note else None
        cases.append(fact(
            {"testdata": m[1], "apiVersion": obj["apiVersion"], "conditions": conditions,
             "expected": m[2]},
            argocd.where(path, offset + m.start(), offset + m.end()),
            argocd.where(data, 0, len(text)),
        ))  # fmt: skip
    if len(cases) < 9:
        sys.exit(f"{path}: TestHPA has {len(cases)} cases")
    return cases


def sync_on_degraded(argocd: Upstream) -> Fact:
    path = "gitops-engine/pkg/sync/sync_context.go"
    m = search(
        r"case health\.HealthStatusDegraded:\s+sc\.setResourceResult\([^)]*OperationFailed",
        argocd.show(path),
    )
    return fact({"running_task_degraded": "OperationFailed"}, argocd.where(path, m.start(), m.end()))  # fmt: skip


def retry(argocd: Upstream) -> Fact:
    """The default retry of an automated sync, the backoff's defaults and formula, and what
    happens to a revision whose sync failed."""
    defaults_path = "pkg/apis/application/v1alpha1/application_defaults.go"
    defaults = argocd.show(defaults_path)
    durations = list(re.finditer(r"DefaultSyncRetry(\w+)\s+time\.Duration = (\d+)", defaults))
    ns = {m[1]: int(m[2]) for m in durations}
    factor = search(r"DefaultSyncRetryFactor\s+= int64\((\d+)\)", defaults)
    types_path = "pkg/apis/application/v1alpha1/types.go"
    backoff, b0, b1 = go_func(argocd.show(types_path), "NextRetryAt")
    for needed in (
        "timeToWait := float64(duration) * (math.Pow(float64(factor), float64(retryCounts)))",
        "timeToWait = math.Min(float64(maxDuration), timeToWait)",
    ):
        if needed not in backoff:
            sys.exit(f"{types_path}: NextRetryAt no longer has {needed}")
    controller = "controller/appcontroller.go"
    go = argocd.show(controller)
    limit = search(r"Retry:\s+appv1\.RetryStrategy\{Limit: (\d+)\}", go)
    skip = search(r"Skipping auto-sync: failed previous sync attempt", go)
    return fact(
        {"duration_seconds": ns["Duration"] / 1e9, "max_duration_seconds": ns["MaxDuration"] / 1e9,
         "factor": int(factor[1]), "automated_default_limit": int(limit[1]),
         "wait_before_retry_n": "min(max_duration, duration * factor ** n), n from 0",
         "failed_revision_auto_synced_again": False},
        argocd.where(defaults_path, durations[0].start(), factor.end()),
        argocd.where(types_path, b0, b1),
        argocd.where(controller, limit.start(), limit.end()),
        argocd.where(controller, skip.start(), skip.end()),
    )  # fmt: skip


def repository_secret(argocd: Upstream) -> Fact:
    common_path, secrets_path = "common/common.go", "util/db/repository_secrets.go"
    common = argocd.show(common_path)
    label = search(r'LabelKeySecretType = "([^"]+)"', common)
    value = search(r'LabelValueSecretTypeRepository = "([^"]+)"', common)
    body, start, end = go_func(argocd.show(secrets_path), "secretToRepository")
    return fact(
        {"label": label[1], "value": value[1],
         "keys": sorted(set(re.findall(r'Data\["(\w+)"\]', body)))},
        argocd.where(common_path, label.start(), label.end()),
        argocd.where(common_path, value.start(), value.end()),
        argocd.where(secrets_path, start, end),
    )  # fmt: skip


# --- kind -------------------------------------------------------------------------------------


def pull_policy(kind: Upstream) -> Fact:
    path = "site/content/docs/user/quick-start.md"
    text = kind.show(path)
    start = text.index("The Kubernetes default pull policy is")
    end = text.index("See [Kubernetes", start)
    note = text[start:end]
    default = search(r"default pull policy is `(\w+)` unless\s+the image tag is `:(\w+)`", note)
    allowed = sorted(set(re.findall(r"`imagePullPolicy: (\w+)`", note)))
    return fact(
        {"kind_loaded_images_run_under": allowed, "default": default[1],
         "default_unless_tag": default[2], "default_for_that_tag": "Always"},
        kind.where(path, start, end),
    )  # fmt: skip


def node_images(notes_file: Path) -> Fact:
    raw = notes_file.read_bytes()
    text = raw.decode()
    start = text.index("Images pre-built for this release:")
    images = re.findall(r"kindest/node:v[\d.]+@sha256:[0-9a-f]{64}", text[start:])
    if not images:
        sys.exit(f"{notes_file}: no node image listed")
    return fact(
        {"release": KIND_RELEASE, "images": images},
        {"repository": "kubernetes-sigs/kind", "tag": KIND_RELEASE, "release_page": KIND_RELEASE_URL,
         "path": "(release notes: the release page's body, saved as text)",
         "lines": [text.count("\n", 0, start) + 1, text.count("\n") + 1],
         "sha256": hashlib.sha256(raw).hexdigest()},
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror-root", type=Path, required=True)
    ap.add_argument("--kind-release-notes", type=Path, required=True)
    args = ap.parse_args()
    root = args.mirror_root
    serving = Upstream(root, "knative/serving", KNATIVE_TAG)
    kourier = Upstream(root, "knative-extensions/net-kourier", KNATIVE_TAG)
    argocd = Upstream(root, "argoproj/argo-cd", ARGOCD_TAG)
    kind = Upstream(root, "kubernetes-sigs/kind", KIND_DOCS_TAG)

    features = knative_features(serving)
    out = {
        "about": " ".join(__doc__.split("\n\n")[0].split()),
        "knative": {
            "features": features,
            "field_masks": knative_field_masks(serving, features["flags"]["value"]),
            "config_maps": [
                config_map(serving, "config/core/configmaps/features.yaml"),
                config_map(serving, "config/core/configmaps/deployment.yaml"),
            ],
            "registries_skipping_tag_resolving": registries_skipping(serving),
            "tag_resolution": tag_resolution(serving),
            "hpas": hpas(serving, "config/core/deployments/activator-hpa.yaml")
            + hpas(serving, "config/core/deployments/webhook-hpa.yaml")
            + hpas(kourier, "config/300-gateway.yaml"),
            "kourier_repository": kourier_home(serving),
        },
        "argocd": {
            "hpa_health": hpa_health_rule(argocd),
            "hpa_health_cases": hpa_health_cases(argocd),
            "sync": sync_on_degraded(argocd),
            "retry": retry(argocd),
            "repository_secret": repository_secret(argocd),
        },
        "kind": {
            "node_images": node_images(args.kind_release_notes),
            "pull_policy": pull_policy(kind),
        },
        "sources": [u.sources() for u in (serving, kourier, argocd, kind)],
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
