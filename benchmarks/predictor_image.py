"""The predictor image's cold start: its installed size, the import time of the server's modules
in it, and its start to ready, started exactly as the staging overlay declares it.

- **size**: the image (as the engine reports it) and the installed Python distributions in it
  (every file each distribution's RECORD lists, .pyc included), the largest named;
- **import**: wall time of ``import serving.__main__, serving.model, serving.surface`` in a fresh
  container (``python -c``, median of ``--runs``), and ``-X importtime``'s slowest modules;
- **start to ready**: the staging InferenceService's predictor container as the kubelet starts it
  (tests/support/podspec.py: command, args, env, user, security context, CPU/memory limits,
  volumes; the model in the storage volume as KServe's storage initializer leaves it) in a pod of
  its own (tests/support/pods.py), from ``podman run`` to the first 200 of its declared readiness
  probe, polled every 50 ms; also from the container's own start (podman's ``StartedAt``), and
  the CPU seconds its process used until then (user + system, /proc/PID/stat: what a busy machine
  does not inflate as it inflates wall time). Median, min and max of ``--runs``, each a new pod.
  Needs root (rootful podman) and the built image.

    .venv/bin/python -m benchmarks.predictor_image [--image REF]... [--runs 5] [--json out.json]

With several --image, each run measures every image in turn, so a busy machine weighs on all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from mlstack.settings import DEFAULTS, code_root
from tests.support import admission
from tests.support.kube import render
from tests.support.pods import Pod
from tests.support.podspec import (
    Image,
    PodContext,
    field_values,
    materialize,
    probe_target,
    run_argv,
)
from tests.support.servers import call

SIZES = """
import importlib.metadata as md, json, os
sizes = {}
for d in md.distributions():
    total = 0
    for f in d.files or []:
        try:
            total += os.path.getsize(d.locate_file(f))
        except OSError:
            pass
    sizes[d.metadata["Name"]] = sizes.get(d.metadata["Name"], 0) + total
print(json.dumps(sizes))
"""
IMPORT = (
    "import time; t, c = time.perf_counter(), time.process_time(); "
    "import serving.__main__, serving.model, serving.surface; "
    "print(time.perf_counter() - t, time.process_time() - c)"
)


def podman(*args: str) -> str:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=True, timeout=600
    ).stdout


def in_image(image: str, *python_args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", "run", "--rm", "--network", "none", "--entrypoint", "python", image,
         *python_args],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip


def sizes(image: str) -> dict[str, int]:
    return json.loads(in_image(image, "-c", SIZES).stdout)


def slowest_imports(image: str) -> list[tuple[str, float]]:
    """``-X importtime``'s slowest top-level imports of the server's modules, in seconds."""
    err = in_image(image, "-X", "importtime", "-c", "import serving.__main__, serving.model").stderr
    slow: list[tuple[str, float]] = []
    for line in err.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("   "):
            slow.append((parts[2].strip(), int(parts[1]) / 1e6))
    return sorted(slow, key=lambda kv: -kv[1])[:8]


def model_dir(tmp: Path) -> Path:
    """A registered model's directory as the storage initializer leaves it (world-readable)."""
    import mlflow

    from mlstack.train.training import TrainingLineage
    from tests.support.servers import registered_model

    uri = registered_model(tmp, DEFAULTS.model_name, TrainingLineage("md5", "data/churn.csv", "a" * 40, "kfp"))  # fmt: skip
    mlflow.set_tracking_uri(uri)
    out = tmp / "provision-location"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    mlflow.artifacts.download_artifacts(f"models:/{DEFAULTS.model_name}@champion", dst_path=str(out))  # fmt: skip
    for path in out.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out


def started_at(name: str) -> float:
    stamp = json.loads(podman("inspect", name, "--format", "{{json .State.StartedAt}}"))
    # podman writes nanoseconds; datetime takes microseconds
    head, _, rest = stamp.partition(".")
    frac, _, zone = rest.partition("+") if "+" in rest else rest.partition("Z")
    return datetime.fromisoformat(f"{head}.{frac[:6]}+{zone or '00:00'}").timestamp()


def cpu_seconds(name: str) -> float:
    """User + system CPU time of a running container's main process (and its waited children)."""
    pid = json.loads(podman("inspect", name, "--format", "{{json .State.Pid}}"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime (fields 14-17)
    return ticks / os.sysconf("SC_CLK_TCK")


def predictor_pod() -> tuple[dict, dict[str, str], dict, tuple[str, int]]:
    """The staging predictor's pod spec, labels, container and readiness target, as rendered."""
    docs = render(code_root() / "manifests" / "overlays" / "staging")
    isvc = admission.find(docs, "InferenceService", DEFAULTS.model_name, "ml-staging")
    spec, labels = admission.predictor_pod(isvc)
    [container] = [c for c in spec["containers"] if c["name"] == "kserve-container"]
    return spec, labels, container, probe_target(container, "readinessProbe") or ("/", 8080)


def start_to_ready(image: str, models: Path, tmp: Path) -> tuple[float, float, float]:
    """One pod: (seconds from podman run to ready, from the container's start to ready, CPU
    seconds of the server process until ready)."""
    spec, labels, container, (path, port) = predictor_pod()
    img = Image.inspect(image)
    volumes = materialize(spec, tmp, given={admission.STORAGE_VOLUME: models})
    fields = field_values("predictor-0", "ml-staging", labels, spec)
    pod = Pod(img.ref, ports=[p["containerPort"] for p in container["ports"]])
    try:
        argv = run_argv(spec, "kserve-container", img, PodContext(fields=fields, volumes=volumes),
                        name=f"{pod.name}-kserve", network=pod.network)  # fmt: skip
        t0 = time.time()
        name = pod.run(argv)
        deadline = time.monotonic() + 240
        while call(pod.url(port, path))[0] != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"not ready in 240 s:\n{pod.logs(name)}")
            time.sleep(0.05)
        ready = time.time()
        return ready - t0, ready - started_at(name), cpu_seconds(name)
    finally:
        pod.close()


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--image", action="append", help="an image to measure (repeat to compare: runs alternate "
        f"between them); default {DEFAULTS.predictor_image}"
    )  # fmt: skip
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    images = args.image or [DEFAULTS.predictor_image]

    found: dict[str, dict] = {}
    for image in images:
        found[image] = {
            "image_bytes": int(podman("image", "inspect", image, "--format", "{{.Size}}")),
            "distributions": sizes(image),
            "import_s": [], "import_cpu_s": [], "ready_from_run_s": [],
            "ready_from_start_s": [], "cpu_until_ready_s": [],
        }  # fmt: skip
    for _ in range(args.runs):
        for image in images:
            wall, cpu = in_image(image, "-c", IMPORT).stdout.split()
            found[image]["import_s"].append(float(wall))
            found[image]["import_cpu_s"].append(float(cpu))
    for image in images:
        found[image]["slowest_imports"] = slowest_imports(image)
    with tempfile.TemporaryDirectory(prefix="mlstack-bench-") as tmp:
        models = model_dir(Path(tmp))
        for i in range(args.runs):
            for j, image in enumerate(images):
                run, start, cpu = start_to_ready(image, models, Path(tmp) / f"pod-{i}-{j}")
                found[image]["ready_from_run_s"].append(run)
                found[image]["ready_from_start_s"].append(start)
                found[image]["cpu_until_ready_s"].append(cpu)

    for image, f in found.items():
        dists = f["distributions"]
        top = sorted(dists.items(), key=lambda kv: -kv[1])
        print(f"== {image}: {f['image_bytes'] / 1e6:.0f} MB")
        print(f"installed distributions: {len(dists)}, {sum(dists.values()) / 1e6:.0f} MB")
        print("  largest: " + ", ".join(f"{n} {b / 1e6:.0f}" for n, b in top[:12]))
        print(f"import serving ({args.runs} runs): {spread(f['import_s'])}, "
              f"CPU {spread(f['import_cpu_s'])}")  # fmt: skip
        print("  slowest top-level imports: "
              + ", ".join(f"{n} {s:.2f}" for n, s in f["slowest_imports"]))  # fmt: skip
        print(f"start to ready from podman run ({args.runs} pods): {spread(f['ready_from_run_s'])}")
        print(f"start to ready from the container's start: {spread(f['ready_from_start_s'])}")
        print(f"CPU time of the server process until ready: {spread(f['cpu_until_ready_s'])}")
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
