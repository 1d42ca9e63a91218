"""Rendering manifests the way a cluster gets them: `kubectl kustomize`, parsed."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENTS = ("staging", "production")


class KustomizeLoader(yaml.SafeLoader):
    """kustomize writes AlertmanagerConfig's `matchType: =` unquoted: YAML 1.1's value tag."""


KustomizeLoader.add_constructor(
    "tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node)
)


def render(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.load_all(out.stdout, Loader=KustomizeLoader) if d]


@functools.cache
def rendered(path: Path) -> list[dict]:
    """``render``, once per session: what a test module shares, rendered when first used (never
    at import: collecting the tests runs no kubectl). The documents are shared: copy to change."""
    return render(path)


def inference_services() -> dict[str, list[dict]]:
    """The InferenceServices each environment's overlay renders, by environment."""
    return {
        env: [
            d
            for d in rendered(ROOT / "manifests/overlays" / env)
            if d["kind"] == "InferenceService"
        ]
        for env in ENVIRONMENTS
    }
