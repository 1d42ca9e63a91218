"""A Kubernetes container as the kubelet starts it, translated to a ``podman run`` command line.

The input is a rendered pod spec (a Deployment's or Job's ``spec.template.spec``, or the pod a
controller makes of a CRD, see ``tests/support/admission.py``); the output is the argv that starts
the image with the command, args, env, user, security context, volumes and resources the pod spec
declares, with the kubelet's rules:

- ``command`` replaces the image's ENTRYPOINT and drops its CMD; ``args`` alone replaces CMD;
  ``$(VAR)`` in command, args and env values expands from the container's env (``$$`` escapes,
  an unknown name stays as written);
- ``env`` values come in order (a value sees only the names above it); ``valueFrom`` reads the
  pod's Secrets, ConfigMaps and fields; a missing non-optional key refuses the container;
- ``runAsUser``/``runAsGroup``/``runAsNonRoot``/``seccompProfile`` merge pod and container
  levels (the container's win); ``runAsNonRoot`` is checked against the image's USER as the
  kubelet checks it; ``readOnlyRootFilesystem`` leaves no writable path but declared volumes
  (podman's ``--read-only`` would add tmpfs on /tmp and /run: ``--read-only-tmpfs=false``);
  ``capabilities``, ``allowPrivilegeEscalation`` and ``privileged`` map to their flags;
- volumes are host directories (``materialize``): emptyDir and claims as the kubelet's
  directories (mode 0777), Secrets and ConfigMaps as read-only files;
- the network is the caller's (a pod's network holder: ``network="container:<name>"``).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# podman flags for a seccomp profile type; no profile means the kubelet's default, Unconfined
# (its SeccompDefault option is off unless a node turns it on)
_SECCOMP = {"RuntimeDefault": [], "Unconfined": ["--security-opt", "seccomp=unconfined"]}


class SpecError(ValueError):
    """The kubelet would not start this container (CreateContainerConfigError and kin)."""


@dataclass(frozen=True)
class Image:
    """What the kubelet reads from an image: its USER, ENTRYPOINT and CMD."""

    ref: str
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()

    @classmethod
    def inspect(cls, ref: str, podman: str = "podman") -> Image:
        out = subprocess.run(
            [podman, "image", "inspect", ref, "--format", "{{json .Config}}"],
            capture_output=True,
            text=True,
            check=True,
        )
        config = json.loads(out.stdout) or {}
        return cls(
            ref,
            config.get("User") or "",
            tuple(config.get("Entrypoint") or ()),
            tuple(config.get("Cmd") or ()),
        )


@dataclass(frozen=True)
class PodContext:
    """What the cluster gives a pod besides its spec: the Secrets and ConfigMaps of its namespace
    (name → key → value), its field values (fieldPath → value, e.g. ``metadata.name``) and a host
    directory per volume (``materialize`` makes them)."""

    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    config_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    fields: Mapping[str, str] = field(default_factory=dict)
    volumes: Mapping[str, Path] = field(default_factory=dict)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$(NAME)`` becomes NAME's value when NAME is defined
    and stays as written otherwise; ``$$`` is one ``$``; any other ``$`` is kept."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 == len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : close]
                out.append(env.get(name, f"$({name})"))
                i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def _lookup(kind: str, store: Mapping[str, Mapping[str, str]], ref: Mapping) -> str | None:
    name, key, optional = ref.get("name", ""), ref["key"], bool(ref.get("optional", False))
    if name in store and key in store[name]:
        return store[name][key]
    if optional:
        return None
    what = f"{kind} {name!r}" if name not in store else f"key {key!r} of {kind} {name!r}"
    raise SpecError(f"{what} not found")


def container_env(container: Mapping, ctx: PodContext) -> dict[str, str]:
    """The container's environment as the kubelet builds it (order kept, later names win)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        raise SpecError(f"envFrom {source}: not supported here")
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            value = _lookup("Secret", ctx.secrets, source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = _lookup("ConfigMap", ctx.config_maps, source["configMapKeyRef"])
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path not in ctx.fields:
                raise SpecError(f"env {name}: no value for fieldRef {path!r}")
            value = ctx.fields[path]
        else:
            raise SpecError(f"env {name}: valueFrom {sorted(source)} not supported here")
        if value is not None:
            env[name] = value
    return env


def effective_security(pod: Mapping, container: Mapping) -> dict:
    """The container's security context with the pod's user, group, non-root and seccomp
    settings filled in where the container leaves them out."""
    pod_sc = pod.get("securityContext") or {}
    merged = dict(container.get("securityContext") or {})
    for key in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile"):
        if key not in merged and key in pod_sc:
            merged[key] = pod_sc[key]
    return merged


def verify_run_as_non_root(security: Mapping, image: Image, container: str) -> None:
    """The kubelet's check before it starts a container whose context says ``runAsNonRoot``:
    a runAsUser of 0 fails; without runAsUser the image's USER must be a numeric non-zero uid
    (a name cannot be verified, an empty USER is root)."""
    if not security.get("runAsNonRoot"):
        return
    if "runAsUser" in security:
        if int(security["runAsUser"]) == 0:
            raise SpecError(f"container {container}: runAsUser breaks non-root policy")
        return
    user = image.user.split(":", 1)[0]
    if not user:
        raise SpecError(f"container {container}: runAsNonRoot and image will run as root")
    if not user.isdigit():
        raise SpecError(
            f"container {container}: runAsNonRoot and image has non-numeric user ({user}), "
            "cannot verify user is non-root"
        )
    if int(user) == 0:
        raise SpecError(f"container {container}: runAsNonRoot and image will run as root")


def _user_flag(security: Mapping, image: Image) -> list[str]:
    if "runAsUser" not in security and "runAsGroup" not in security:
        return []
    uid = str(security.get("runAsUser", image.user.split(":", 1)[0] or "0"))
    gid = security.get("runAsGroup")
    return ["--user", f"{uid}:{gid}" if gid is not None else uid]


def _security_flags(pod: Mapping, security: Mapping) -> list[str]:
    flags: list[str] = []
    if security.get("privileged"):
        flags.append("--privileged")
    if security.get("readOnlyRootFilesystem"):
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if security.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    caps = security.get("capabilities") or {}
    for cap in caps.get("drop") or []:
        flags += ["--cap-drop", cap]
    for cap in caps.get("add") or []:
        flags += ["--cap-add", cap]
    profile = (security.get("seccompProfile") or {}).get("type", "Unconfined")
    if profile not in _SECCOMP:
        raise SpecError(f"seccompProfile {profile!r}: not supported here")
    flags += _SECCOMP[profile]
    pod_sc = pod.get("securityContext") or {}
    groups = [*pod_sc.get("supplementalGroups", [])]
    if "fsGroup" in pod_sc:
        groups.append(pod_sc["fsGroup"])
    for gid in groups:
        flags += ["--group-add", str(gid)]
    return flags


def _resource_flags(container: Mapping) -> list[str]:
    limits = (container.get("resources") or {}).get("limits") or {}
    flags: list[str] = []
    if "cpu" in limits:
        cpu = str(limits["cpu"])
        cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
        flags += ["--cpus", f"{cores:g}"]
    if "memory" in limits:
        flags += ["--memory", _bytes(str(limits["memory"]))]
    return flags


_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 10**3, "M": 10**6, "G": 10**9}


def _bytes(quantity: str) -> str:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|k|M|G)?", quantity)
    if not match:
        raise SpecError(f"memory quantity {quantity!r}: not supported here")
    return str(int(match[1]) * _UNITS.get(match[2] or "", 1))


def _volume_flags(container: Mapping, pod: Mapping, ctx: PodContext) -> list[str]:
    declared = {v["name"]: v for v in pod.get("volumes") or []}
    flags: list[str] = []
    for mount in container.get("volumeMounts") or []:
        name = mount["name"]
        if name not in declared:
            raise SpecError(f"volumeMount {name!r}: no such volume in the pod")
        if name not in ctx.volumes:
            raise SpecError(f"volume {name!r}: no host directory given")
        source = Path(ctx.volumes[name])
        if mount.get("subPath"):
            source = source / mount["subPath"]
        # the kubelet mounts Secret, ConfigMap and projected volumes read-only whatever the mount
        read_only = mount.get("readOnly", False) or any(
            k in declared[name] for k in ("secret", "configMap", "projected", "downwardAPI")
        )
        flags += ["--volume", f"{source}:{mount['mountPath']}{':ro' if read_only else ''}"]
    return flags


def command_line(container: Mapping, image: Image, env: Mapping[str, str]) -> list[str]:
    """``--entrypoint`` and trailing args for podman, by Kubernetes' rules: ``command`` replaces
    ENTRYPOINT and drops CMD (podman drops CMD too when ``--entrypoint`` is given); ``args`` only
    replaces CMD; both expanded from the env."""
    command = [expand(c, env) for c in container.get("command") or []]
    args = [expand(a, env) for a in container.get("args") or []]
    flags = ["--entrypoint", json.dumps(command)] if command else []
    return [*flags, image.ref, *args]


def run_argv(
    pod: Mapping,
    container_name: str,
    image: Image,
    ctx: PodContext,
    *,
    name: str,
    network: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    podman: str = "podman",
) -> list[str]:
    """The ``podman run`` command line that starts ``container_name`` of ``pod`` as the kubelet
    would (detached; the caller removes the container). ``extra_env`` is for what no manifest
    can say here (a stand-in's address); it comes after the declared env and cannot replace it."""
    [container] = [c for c in pod.get("containers") or [] if c["name"] == container_name] or [None]
    if container is None:
        raise SpecError(f"no container {container_name!r} in the pod")
    security = effective_security(pod, container)
    verify_run_as_non_root(security, image, container_name)
    env = container_env(container, ctx)
    clash = set(extra_env or {}) & set(env)
    if clash:
        raise SpecError(f"extra env {sorted(clash)} would replace the manifest's")
    env.update(extra_env or {})
    argv = [podman, "run", "--detach", "--pull", "never", "--name", name]
    if network:
        argv += ["--network", network]
        if network.startswith("container:"):
            argv += ["--uts", network]  # one hostname per pod
    argv += _user_flag(security, image)
    argv += _security_flags(pod, security)
    argv += _resource_flags(container)
    if container.get("workingDir"):
        argv += ["--workdir", container["workingDir"]]
    argv += _volume_flags(container, pod, ctx)
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    return argv + command_line(container, image, env)


def materialize(
    pod: Mapping,
    root: Path,
    secrets: Mapping[str, Mapping[str, str]] = {},  # noqa: B006 (read only)
    config_maps: Mapping[str, Mapping[str, str]] = {},  # noqa: B006 (read only)
    given: Mapping[str, Path] = {},  # noqa: B006 (read only)
) -> dict[str, Path]:
    """A host directory for each of the pod's volumes, under ``root``: emptyDir and
    persistentVolumeClaim as the kubelet and a local-path provisioner make them (empty, mode
    0777), Secret and ConfigMap volumes as their keys' files (``items`` and ``defaultMode``
    honoured). ``given`` supplies a directory for a volume by name (what a controller's init
    container would have filled, e.g. KServe's storage initializer)."""
    out: dict[str, Path] = {}
    for volume in pod.get("volumes") or []:
        name = volume["name"]
        if name in given:
            out[name] = Path(given[name])
            continue
        path = root / name
        path.mkdir(parents=True)
        if "emptyDir" in volume or "persistentVolumeClaim" in volume:
            path.chmod(0o777)
        elif "secret" in volume or "configMap" in volume:
            kind = "secret" if "secret" in volume else "configMap"
            spec = volume[kind]
            ref = spec.get("secretName") or spec.get("name", "")
            store = secrets if kind == "secret" else config_maps
            if ref not in store and not spec.get("optional"):
                raise SpecError(f"volume {name!r}: {kind} {ref!r} not found")
            data = store.get(ref, {})
            items = spec.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                if item["key"] not in data:
                    raise SpecError(f"volume {name!r}: key {item['key']!r} not in {ref!r}")
                target = path / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[item["key"]])
                target.chmod(item.get("mode", spec.get("defaultMode", 0o644)))
            path.chmod(0o755)
        else:
            raise SpecError(f"volume {name!r}: {sorted(set(volume) - {'name'})} not supported")
        out[name] = path
    return out


def field_values(
    name: str, namespace: str, labels: Mapping[str, str], pod: Mapping, pod_ip: str = "127.0.0.1"
) -> dict[str, str]:
    """The downward API's values for a pod (what ``fieldRef`` reads)."""
    values = {
        "metadata.name": name,
        "metadata.namespace": namespace,
        "spec.serviceAccountName": pod.get("serviceAccountName", "default"),
        "spec.nodeName": "node",
        "status.podIP": pod_ip,
        "status.hostIP": pod_ip,
    }
    values.update({f"metadata.labels['{k}']": v for k, v in labels.items()})
    return values


def declared_ports(container: Mapping) -> dict[str, int]:
    """Port name (or number as text) → containerPort."""
    ports = {}
    for port in container.get("ports") or []:
        ports[str(port["containerPort"])] = int(port["containerPort"])
        if port.get("name"):
            ports[port["name"]] = int(port["containerPort"])
    return ports


def probe_target(container: Mapping, kind: str) -> tuple[str, int] | None:
    """(path, containerPort) of the container's ``readinessProbe``/``livenessProbe`` httpGet."""
    probe = container.get(kind) or {}
    get = probe.get("httpGet")
    if not get:
        return None
    port = get["port"]
    ports = declared_ports(container)
    if str(port) not in ports:
        if isinstance(port, int) or str(port).isdigit():
            return get.get("path", "/"), int(port)
        raise SpecError(f"{kind}: port {port!r} is not a declared port")
    return get.get("path", "/"), ports[str(port)]
