"""Strict offline validation of Kubernetes objects against the SDKs' own models.

The SDK deserializers silently drop unknown fields, so they cannot catch a typo. This walks a
manifest over a model class's ``attribute_map`` (JSON names) and ``openapi_types`` (types), and
reports every unknown field and every wrongly typed value with its path. Model classes come from
the kubernetes client (core kinds), kserve (InferenceService) and kubeflow-katib (Experiment).
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path
from typing import Any

_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\((\w+), (.+)\)$")
_PRIMITIVES = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
}


def katib_models() -> types.ModuleType:
    """``kubeflow.katib.models`` without the package's ``__init__``, which imports a gRPC client
    built for protobuf 4 (kfp needs 6); the models themselves are plain Python."""
    try:
        return importlib.import_module("kubeflow.katib.models")
    except ImportError:
        pass
    import kubeflow

    for root in kubeflow.__path__:
        if (Path(root) / "katib" / "models").is_dir():
            package = types.ModuleType("kubeflow.katib")
            package.__path__ = [str(Path(root) / "katib")]
            sys.modules["kubeflow.katib"] = package
            return importlib.import_module("kubeflow.katib.models")
    raise ImportError("kubeflow-katib is not installed (make setup installs it with --no-deps)")


class Walker:
    def __init__(self, *modules: types.ModuleType):
        import kubernetes.client.models as core

        self.modules = [*modules, core]

    def model(self, name: str) -> type:
        for module in self.modules:
            if hasattr(module, name):
                return getattr(module, name)
        raise KeyError(f"no model class {name}")

    def errors(self, value: Any, type_name: str, path: str = "") -> list[str]:
        """Every unknown field and wrong type under ``value``, read as ``type_name``."""
        if value is None:
            return []
        if type_name == "object":
            return []
        if m := _LIST.match(type_name):
            if not isinstance(value, list):
                return [f"{path}: expected a list, got {type(value).__name__}"]
            return [e for i, v in enumerate(value) for e in self.errors(v, m[1], f"{path}[{i}]")]
        if m := _DICT.match(type_name):
            if not isinstance(value, dict):
                return [f"{path}: expected a mapping, got {type(value).__name__}"]
            return [e for k, v in value.items() for e in self.errors(v, m[2], f"{path}.{k}")]
        if type_name in _PRIMITIVES:
            ok = isinstance(value, _PRIMITIVES[type_name]) and not (
                type_name in ("int", "float") and isinstance(value, bool)
            )
            return [] if ok else [f"{path}: expected {type_name}, got {value!r}"]
        cls = self.model(type_name)
        if not isinstance(value, dict):
            return [f"{path}: expected a {type_name} object, got {type(value).__name__}"]
        by_json = {json: attr for attr, json in cls.attribute_map.items()}
        out = []
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key not in by_json:
                out.append(f"{where}: unknown field (not in {type_name})")
                continue
            out += self.errors(item, cls.openapi_types[by_json[key]], where)
        return out


def experiment_errors(doc: dict[str, Any]) -> list[str]:
    """A Katib Experiment, and its trial template's Job, checked strictly."""
    walker = Walker(katib_models())
    out = walker.errors(doc, "V1beta1Experiment")
    trial_spec = doc.get("spec", {}).get("trialTemplate", {}).get("trialSpec")
    if isinstance(trial_spec, dict) and trial_spec.get("kind") == "Job":
        out += walker.errors(trial_spec, "V1Job", "spec.trialTemplate.trialSpec")
    return out
