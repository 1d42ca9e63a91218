"""Katib in a cluster: the Experiment created through the Kubernetes API (``CustomObjectsApi``;
the kubeflow-katib SDK conflicts with kfp's protobuf), watched to its end, deleted when it fails,
times out or is interrupted.
"""

from __future__ import annotations

import contextlib
import copy
import time
import uuid
from collections.abc import Callable
from typing import Any

from mlstack.errors import StackError
from mlstack.tune.spec import GROUP, PLURAL, VERSION, Experiment


def for_cluster(
    exp: Experiment, namespace: str, env: dict[str, str], *, image: str | None = None
) -> dict[str, Any]:
    """The manifest to create: a unique name, the namespace, and the trial container's env values
    (data repo and rev, tracking URI, parent run) filled in. Returns a new dict (``exp`` is left
    as it is); raises nothing."""
    body = copy.deepcopy(exp.raw)
    meta = body.get("metadata", {})
    body["metadata"] = {**meta, "namespace": namespace or meta.get("namespace", "default")}
    body["metadata"]["name"] = f"{exp.name}-{uuid.uuid4().hex[:6]}"
    template = body["spec"]["trialTemplate"]
    for container in template["trialSpec"]["spec"]["template"]["spec"]["containers"]:
        if container.get("name") != template["primaryContainerName"]:
            continue
        if image:
            container["image"] = image
        items = container.setdefault("env", [])
        present = {item["name"] for item in items}
        for item in items:
            if item["name"] in env:  # a value given here wins over the manifest's Secret
                item.pop("valueFrom", None)
                item["value"] = env[item["name"]]
        items.extend({"name": k, "value": v} for k, v in env.items() if k not in present)
    return body


def custom_objects_api() -> Any:
    """The Kubernetes CustomObjectsApi of this pod's cluster, else of the kubeconfig's context;
    raises ``StackError`` when neither is configured."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise StackError(f"no Kubernetes cluster configured: {exc}") from None
    return client.CustomObjectsApi()


def run_in_cluster(
    body: dict[str, Any],
    *,
    timeout_seconds: float,
    api: Any = None,
    poll_seconds: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Create the Experiment, wait for it to finish, return the best trial's parameters.

    Raises ``StackError`` when the API refuses or cannot be reached, or as ``wait`` does (the
    Experiment failed or timed out); on any error or interrupt the Experiment is deleted."""
    from kubernetes.client.exceptions import ApiException

    api = api or custom_objects_api()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except ApiException as exc:
        raise StackError(
            f"cannot create Experiment {namespace}/{name}: {exc.status} {exc.reason}"
        ) from None
    except OSError as exc:
        raise StackError(f"Kubernetes API unreachable: {exc}") from None
    try:
        return wait(
            api,
            namespace,
            name,
            timeout_seconds=timeout_seconds,
            poll_seconds=poll_seconds,
            sleep=sleep,
        )
    except BaseException:
        # failed, timed out or interrupted: stop its trials rather than leave them running
        with contextlib.suppress(Exception):
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        raise


def wait(
    api: Any,
    namespace: str,
    name: str,
    *,
    timeout_seconds: float,
    poll_seconds: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Poll the Experiment until it succeeds; return the optimal trial's parameter assignments.

    Raises ``StackError`` when it failed, succeeded without an optimal trial, or did not finish
    within ``timeout_seconds``."""
    waited = 0.0
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = obj.get("status", {})
        conditions = {
            c["type"]: c for c in status.get("conditions", []) if c.get("status") == "True"
        }
        if "Succeeded" in conditions:
            assignments = status.get("currentOptimalTrial", {}).get("parameterAssignments", [])
            if not assignments:
                raise StackError(
                    f"Experiment {namespace}/{name} succeeded without an optimal trial"
                )
            return {a["name"]: str(a["value"]) for a in assignments}
        if "Failed" in conditions:
            raise StackError(
                f"Experiment {namespace}/{name} failed: {conditions['Failed'].get('message', '')}"
            )
        if waited >= timeout_seconds:
            raise StackError(
                f"Experiment {namespace}/{name} did not finish in {timeout_seconds:.0f}s"
            )
        sleep(poll_seconds)
        waited += poll_seconds
