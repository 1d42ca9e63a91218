"""What the cluster's controllers make of our rendered objects before the kubelet starts a
container, at the pinned versions (read in their source at that tag):

- External Secrets Operator (``ExternalSecret`` → the Secret's keys, ``template.data`` with
  ``{{ .KEY }}`` replacing the fetched keys);
- KServe v0.20 + Knative knative-v1.21.1 (an InferenceService's custom predictor → its pod):
  the storage initializer's emptyDir ``kserve-provision-location`` mounted read-only at
  /mnt/models and ``STORAGE_URI`` rewritten to that path
  (pkg/webhook/admission/pod/storage_initializer_injector.go); Knative's ``PORT``,
  ``K_REVISION``, ``K_CONFIGURATION``, ``K_SERVICE``, the port renamed ``user-port``, the
  readiness probe run by queue-proxy against the user port and the liveness probe's port
  rewritten to it (pkg/reconciler/revision/resources/deploy.go, env_var.go);
- Katib v0.19 (a trial Job's pod): ``${trialParameters.X}`` substituted, ``KATIB_TRIAL_NAME``
  from the trial label, and for the StdOut collector the primary container wrapped in
  ``sh -c "<command> 1>/var/log/katib/metrics.log 2>&1 && echo completed > …/$$$$.pid"`` with
  an emptyDir at /var/log/katib (pkg/webhook/v1beta1/pod/inject_webhook.go, utils.go).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

# KServe: constants.DefaultModelLocalMountPath, constants.StorageInitializerVolumeName
MODEL_MOUNT = "/mnt/models"
STORAGE_VOLUME = "kserve-provision-location"
# KServe's component-extension fields of a predictor: the controller's, not the pod's
_PREDICTOR_EXTENSION = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher", "labels",
    "annotations", "deploymentStrategy", "autoScaling", "storageUri", "storage", "model",
    "workerSpec", "minDeploymentReplicas",
}  # fmt: skip
# Katib: common.DefaultFilePath, consts.LabelTrialName
KATIB_METRICS_FILE = "/var/log/katib/metrics.log"
KATIB_TRIAL_LABEL = "katib.kubeflow.org/trial"


def find(docs: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    """The one rendered document of that kind and name (and namespace, when given)."""
    found = [
        d
        for d in docs
        if d.get("kind") == kind
        and d["metadata"]["name"] == name
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    if len(found) != 1:
        raise LookupError(f"{len(found)} rendered {kind} {namespace or '*'}/{name}")
    return found[0]


_TEMPLATE_KEY = re.compile(r"\{\{\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def external_secret_data(doc: Mapping, store: Mapping[tuple[str, str], str]) -> dict[str, str]:
    """The Secret an ExternalSecret makes from ``store`` ((remote key, property) → value)."""
    spec = doc["spec"]
    fetched = {}
    for item in spec.get("data") or []:
        ref = item["remoteRef"]
        where = (ref["key"], ref.get("property", ""))
        if where not in store:
            raise LookupError(f"ExternalSecret {doc['metadata']['name']}: no remote {where}")
        fetched[item["secretKey"]] = store[where]
    template = (spec.get("target") or {}).get("template") or {}
    if not template.get("data"):
        return fetched

    def one(match: re.Match) -> str:
        if match[1] not in fetched:
            raise LookupError(f"template key {match[1]!r} is not fetched")
        return fetched[match[1]]

    # mergePolicy Replace (the default): the Secret holds the template's keys only
    return {k: _TEMPLATE_KEY.sub(one, str(v)) for k, v in template["data"].items()}


def secrets_in(
    docs: list[dict], namespace: str, store: Mapping[tuple[str, str], str]
) -> dict[str, dict[str, str]]:
    """Every Secret the rendered ExternalSecrets make in ``namespace`` (one whose remote keys
    the store lacks makes none, as the operator's sync fails)."""
    out = {}
    for doc in docs:
        if doc.get("kind") != "ExternalSecret" or doc["metadata"].get("namespace") != namespace:
            continue
        target = (doc["spec"].get("target") or {}).get("name", doc["metadata"]["name"])
        try:
            out[target] = external_secret_data(doc, store)
        except LookupError:
            continue
    return out


def workload_pod(doc: Mapping) -> dict:
    """The pod spec a Deployment, StatefulSet or Job makes (its template's spec); a StatefulSet's
    controller adds a claim volume for each of its volumeClaimTemplates (``<claim>-<set>-0``)."""
    spec = copy.deepcopy(doc["spec"]["template"]["spec"])
    for claim in doc["spec"].get("volumeClaimTemplates") or []:
        name = claim["metadata"]["name"]
        volume = {"claimName": f"{name}-{doc['metadata']['name']}-0"}
        spec.setdefault("volumes", []).append({"name": name, "persistentVolumeClaim": volume})
    return spec


def knative_revision(user: dict, service: str, revision: int) -> None:
    """What Knative's revision does to the user container of ``service``: one user port (the
    first declared, else 8080), ``PORT`` and the ``K_*`` env, the probes on the user port."""
    env = user.setdefault("env", [])
    ports = user.get("ports") or []
    port = int(ports[0]["containerPort"]) if ports else 8080
    user["ports"] = [{"name": "user-port", "containerPort": port}]
    env.append({"name": "PORT", "value": str(port)})
    env += [
        {"name": "K_REVISION", "value": f"{service}-{revision:05d}"},
        {"name": "K_CONFIGURATION", "value": service},
        {"name": "K_SERVICE", "value": service},
    ]
    for kind in ("readinessProbe", "livenessProbe"):
        get = (user.get(kind) or {}).get("httpGet")
        if get:  # queue-proxy probes readiness on the user port; liveness is rewritten to it
            get["port"] = port


def predictor_pod(isvc: Mapping, revision: int = 1) -> tuple[dict, dict[str, str]]:
    """(pod spec, pod labels) of an InferenceService's custom predictor in Knative mode."""
    name = isvc["metadata"]["name"]
    predictor = isvc["spec"]["predictor"]
    pod = {k: copy.deepcopy(v) for k, v in predictor.items() if k not in _PREDICTOR_EXTENSION}
    [user] = [c for c in pod["containers"] if c["name"] == "kserve-container"]
    # KServe's storage initializer (the storage.kserve.io/readonly annotation defaults to true)
    annotations = isvc["metadata"].get("annotations") or {}
    read_only = annotations.get("storage.kserve.io/readonly", "true") != "false"
    env = user.setdefault("env", [])
    uri = next((e.get("value") for e in env if e["name"] == "STORAGE_URI"), None)
    if uri:
        for item in env:
            if item["name"] == "STORAGE_URI":
                item["value"] = MODEL_MOUNT
        pod.setdefault("volumes", []).append({"name": STORAGE_VOLUME, "emptyDir": {}})
        user.setdefault("volumeMounts", []).append(
            {"name": STORAGE_VOLUME, "mountPath": MODEL_MOUNT, "readOnly": read_only}
        )
    service = f"{name}-predictor"
    knative_revision(user, service, revision)
    labels = {
        "serving.kserve.io/inferenceservice": name,
        "serving.knative.dev/service": service,
        "serving.knative.dev/revision": f"{service}-{revision:05d}",
    }
    return pod, labels


def transformer_pod(isvc: Mapping, revision: int = 1) -> tuple[dict, dict[str, str]]:
    """(pod spec, pod labels) of an InferenceService's custom transformer in Knative mode, after
    KServe v0.20's controller (``CustomTransformer.Default`` and ``GetContainer``; the logic is
    unchanged on kserve master): the first container named ``kserve-container``, and appended to
    its args unless an arg starts with them: ``--model_name <isvc>``, ``--predictor_host
    <isvc>-predictor.<namespace>``, ``--http_port 8080`` and, when the transformer sets
    ``containerConcurrency``, ``--workers <it>``; ``INFERENCE_SERVICE_NAME`` in its env. Then
    Knative's revision as for the predictor (``PORT``, ``K_*``, ``user-port``, probes)."""
    name = isvc["metadata"]["name"]
    namespace = isvc["metadata"].get("namespace", "default")
    transformer = isvc["spec"]["transformer"]
    pod = {k: copy.deepcopy(v) for k, v in transformer.items() if k not in _PREDICTOR_EXTENSION}
    user = pod["containers"][0]
    user["name"] = "kserve-container"
    args = user.setdefault("args", [])
    appended = [
        ("--model_name", name),
        ("--predictor_host", f"{name}-predictor.{namespace}"),
        ("--http_port", "8080"),
    ]
    if transformer.get("containerConcurrency") is not None:
        appended.append(("--workers", str(transformer["containerConcurrency"])))
    for flag, value in appended:
        if not any(a == flag or a.startswith(flag) for a in args):
            args += [flag, value]
    env = user.setdefault("env", [])
    env.append({"name": "INFERENCE_SERVICE_NAME", "value": name})
    service = f"{name}-transformer"
    knative_revision(user, service, revision)
    labels = {
        "serving.kserve.io/inferenceservice": name,
        "component": "transformer",
        "serving.knative.dev/service": service,
        "serving.knative.dev/revision": f"{service}-{revision:05d}",
    }
    return pod, labels


def _substitute(value: Any, params: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return re.sub(
            r"\$\{trialParameters\.([^}]+)\}", lambda m: params[m[1]], value
        )  # a missing parameter is a KeyError: Katib refuses the Trial too
    if isinstance(value, list):
        return [_substitute(v, params) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, params) for k, v in value.items()}
    return value


def katib_trial_pod(
    experiment: Mapping,
    assignments: Mapping[str, str],
    trial_name: str,
    early_stopping_rules: bool = False,
) -> tuple[dict, dict[str, str]]:
    """(pod spec, pod labels) of one trial of ``experiment`` (as the tune step submits it) with
    ``assignments`` (parameter name → value), after Katib's controller and pod webhook."""
    template = experiment["spec"]["trialTemplate"]
    values = {tp["name"]: assignments[tp["reference"]] for tp in template["trialParameters"]}
    job = _substitute(copy.deepcopy(template["trialSpec"]), values)
    pod = job["spec"]["template"]["spec"]
    primary = template["primaryContainerName"]
    [container] = [c for c in pod["containers"] if c["name"] == primary]
    container.setdefault("env", []).append(
        {
            "name": "KATIB_TRIAL_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{KATIB_TRIAL_LABEL}']"}},
        }
    )
    collector = experiment["spec"].get("metricsCollectorSpec", {}).get("collector", {})
    if collector.get("kind", "StdOut") == "StdOut":
        if not container.get("command"):
            raise ValueError("the trial container needs a command (Katib reads the image's else)")
        words = [*container["command"], *(container.get("args") or [])]
        command = ["sh", "-c"]
        if words[0] in ("sh", "bash") and words[1:2] == ["-c"]:
            command, words = words[:2], words[2:]
        directory = KATIB_METRICS_FILE.rsplit("/", 1)[0]
        words.append(f"1>{KATIB_METRICS_FILE} 2>&1")
        if early_stopping_rules:
            words += [
                "||",
                f"if test -f {directory}/$$$$.pid && [ $(head -n 1 {directory}/$$.pid) = "
                "early-stopped ]; then echo Training Container was Early Stopped; "
                "else echo Training Container was Failed; exit 1; fi",
            ]
        words += ["&&", f"echo completed > {directory}/$$$$.pid"]
        container["command"], container["args"] = command, [" ".join(words)]
        pod.setdefault("volumes", []).append({"name": "metrics-volume", "emptyDir": {}})
        container.setdefault("volumeMounts", []).append(
            {"name": "metrics-volume", "mountPath": directory}
        )
    return pod, {KATIB_TRIAL_LABEL: trial_name, "job-name": trial_name}
