"""Strict offline validation of Kubernetes objects against their projects' own models.

The SDK deserializers silently drop unknown fields, so they cannot catch a typo. ``Walker`` walks a
manifest over a Python model class's ``attribute_map`` (JSON names) and ``openapi_types`` (types):
the kubernetes client (core kinds), kserve (InferenceService) and kubeflow-katib (Experiment).
``TsModels`` does the same over the @kubernetes-models TypeScript declarations, for the kinds with
no faithful Python models (Argo CD, Prometheus Operator, External Secrets). ``manifest_errors``
picks the right one for any document, and fails on a kind that has no model at all.
"""

from __future__ import annotations

import functools
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


# --- custom resources without a Python SDK: the @kubernetes-models TypeScript declarations -------
#
# Argo CD, the Prometheus Operator and External Secrets publish no Python models that keep every
# field (argocd-python-client's are the API server's JSON, not the CRDs). The npm packages
# @kubernetes-models/* are generated from the projects' own Go API types, one `.d.ts` per type;
# `make setup` installs them, pinned by tools/crd-models/package-lock.json. This reads the small
# part of TypeScript those declarations use and walks a manifest over it as strictly as above.

CRD_MODELS = Path(__file__).resolve().parents[2] / "tools" / "crd-models" / "node_modules"
_MODEL_PACKAGES = ("@kubernetes-models", "kubernetes-models")
_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|([A-Za-z_$][\w$]*)|(-?\d+(?:\.\d+)?)|(.))', re.S)
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_ANY = ("any",)

TsType = tuple


def _tokens(text: str) -> list[str]:
    text = _COMMENT.sub(" ", text)
    return [m.group(m.lastindex) for m in _TOKEN.finditer(text) if m.lastindex]


class _Parser:
    """``export interface``, ``export type`` and ``export type { A as B }`` of one file."""

    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0
        self.types: dict[str, TsType] = {}
        self.aliases: dict[str, str] = {}

    def peek(self, ahead: int = 0) -> str | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.toks[self.i]
        if expected is not None and tok != expected:
            raise SyntaxError(f"expected {expected!r}, got {tok!r} at token {self.i}")
        self.i += 1
        return tok

    def parse(self) -> _Parser:
        while self.peek() is not None:
            if self.peek() == "export" and self.peek(1) == "interface":
                self.i += 2
                name = self.take()
                bases: list[str] = []  # `extends A, B`: Go's embedded structs
                depth, extending = 0, False
                while not (self.peek() == "{" and depth == 0):
                    tok = self.take()
                    depth += (tok == "<") - (tok == ">")
                    if tok == "extends":
                        extending = True
                    elif extending and depth == 0 and tok[0].isalpha():
                        bases.append(tok)
                model = self.object()
                if bases:
                    fields = model[1] if model[0] == "object" else {}
                    model = ("object", fields, tuple(bases))
                self.types[name] = model
            elif self.peek() == "export" and self.peek(1) == "type" and self.peek(2) == "{":
                self.i += 3
                while self.peek() != "}":
                    local = self.take()
                    if self.peek() == "as":
                        self.i += 1
                        self.aliases[self.take()] = local
                    if self.peek() == ",":
                        self.i += 1
                self.i += 1
            elif self.peek() == "export" and self.peek(1) == "type" and self.peek(3) == "=":
                name = self.toks[self.i + 2]
                self.i += 4
                self.types[name] = self.union()
            else:
                self.i += 1
        return self

    def union(self) -> TsType:
        if self.peek() == "|":
            self.i += 1
        branches = [self.postfix()]
        while self.peek() in ("|", "&"):
            joiner = self.take()
            branches.append(self.postfix())
            if joiner == "&":  # intersections are not used by the models: accept anything
                return _ANY
        return branches[0] if len(branches) == 1 else ("union", tuple(branches))

    def postfix(self) -> TsType:
        t = self.primary()
        while self.peek() == "[":
            if self.peek(1) == "]":
                self.i += 2
                t = ("array", t)
            else:  # indexed access (T["key"]): only in class statics
                while self.take() != "]":
                    pass
                t = _ANY
        return t

    def primary(self) -> TsType:
        tok = self.take()
        if tok == "{":
            self.i -= 1
            return self.object()
        if tok == "(":
            t = self.union()
            self.take(")")
            return t
        if tok.startswith('"'):
            return ("lit", tok[1:-1])
        if tok[0].isdigit() or tok[0] == "-":
            return ("lit", float(tok))
        if tok in ("true", "false"):
            return ("lit", tok == "true")
        if tok in ("string", "number", "boolean", "null"):
            return ("prim", tok)
        if tok in ("any", "unknown", "object", "undefined"):
            return _ANY
        if tok == "Array" and self.peek() == "<":
            self.i += 1
            t = self.union()
            self.take(">")
            return ("array", t)
        if self.peek() == "<" or tok == "import":  # generic utility types: not in model fields
            depth = 0
            while True:
                t = self.take()
                depth += (t in ("<", "(")) - (t in (">", ")"))
                if depth == 0 and t in ">)":
                    return _ANY
        return ("ref", tok)

    def object(self) -> TsType:
        self.take("{")
        fields: dict[str, tuple[TsType, bool]] = {}
        values: TsType | None = None
        while self.peek() != "}":
            if self.peek() == "[":  # index signature: [key: string]: T
                while self.take() != "]":
                    pass
                self.take(":")
                values = self.union()
            else:
                name = self.take().strip('"')
                optional = self.peek() == "?"
                self.i += optional
                self.take(":")
                fields[name] = (self.union(), not optional)
            if self.peek() in (";", ","):
                self.i += 1
        self.take("}")
        if values is not None and not fields:
            return ("map", values)
        if not fields:  # RawExtension and friends: any JSON
            return _ANY
        return ("object", fields)


class TsModels:
    """Strict walks over the @kubernetes-models declarations installed under ``root``."""

    def __init__(self, root: Path = CRD_MODELS):
        packages = [root / p for p in _MODEL_PACKAGES if (root / p).is_dir()]
        if not packages:
            raise FileNotFoundError(f"no @kubernetes-models packages under {root} (make setup)")
        self.files: dict[str, Path] = {}  # exported type name -> declaring file
        self.kinds: dict[tuple[str, str], Path] = {}  # (apiVersion, kind) -> file
        self._parsed: dict[Path, _Parser] = {}
        declares = re.compile(r"export (?:interface|type) (\w+)|\b(I\w+) as (I\w+)")
        for files in (p.rglob("*.d.ts") for p in packages):
            for path in files:
                if "node_modules" in path.relative_to(root).parts[1:]:
                    continue
                for m in declares.finditer(path.read_text()):
                    self.files.setdefault(m[1] or m[3], path)
                kind = self._kind_of(path)
                if kind:
                    self.kinds.setdefault(kind, path)

    @staticmethod
    def _kind_of(path: Path) -> tuple[str, str] | None:
        """``<group>/<version>/<Kind>.d.ts``; core kinds live in ``kubernetes-models/v1/``."""
        version, group = path.parent.name, path.parent.parent.name
        if not re.fullmatch(r"v\d+((alpha|beta)\d+)?", version) or not path.name[0].isupper():
            return None
        kind = path.name.removesuffix(".d.ts")
        api = version if group == "kubernetes-models" else f"{group}/{version}"
        return api, kind  # a type that is not a kind has no `kind` field: kind() refuses it

    def resolve(self, name: str) -> TsType:
        path = self.files.get(name)
        if path is None:
            raise KeyError(f"no model type {name}")
        parsed = self._parse(path)
        return parsed.types[parsed.aliases.get(name, name)]

    def kind(self, api_version: str, kind: str) -> TsType:
        path = self.kinds.get((api_version, kind))
        if path is None:
            raise KeyError(f"no model for {kind} ({api_version})")
        model = self._parse(path).types.get(f"I{kind}")
        if model is None or model[0] != "object" or "kind" not in model[1]:
            raise KeyError(f"{kind} ({api_version}) is a type, not a kind")
        return model

    def _parse(self, path: Path) -> _Parser:
        if path not in self._parsed:
            self._parsed[path] = _Parser(path.read_text()).parse()
        return self._parsed[path]

    def fields(self, t: TsType) -> dict[str, tuple[TsType, bool]]:
        """An interface's fields with those of the interfaces it extends."""
        merged: dict[str, tuple[TsType, bool]] = {}
        for base in t[2] if len(t) > 2 else ():
            resolved = self.resolve(base)
            if resolved[0] == "object":
                merged |= self.fields(resolved)
        return merged | t[1]

    def errors(self, value: Any, t: TsType, path: str = "") -> list[str]:
        """Every unknown field, wrong type and missing required field under ``value``."""
        if value is None or t[0] == "any":
            return []
        where = path or "."
        if t[0] == "ref":
            return self.errors(value, self.resolve(t[1]), path)
        if t[0] == "prim":
            ok = {
                "string": isinstance(value, str),
                "number": isinstance(value, (int, float)) and not isinstance(value, bool),
                "boolean": isinstance(value, bool),
                "null": value is None,
            }[t[1]]
            return [] if ok else [f"{where}: expected {t[1]}, got {value!r}"]
        if t[0] == "lit":
            return [] if value == t[1] else [f"{where}: expected {t[1]!r}, got {value!r}"]
        if t[0] == "union":
            tried = [self.errors(value, branch, path) for branch in t[1]]
            if any(not e for e in tried):
                return []
            if all(b[0] == "lit" for b in t[1]):
                allowed = ", ".join(repr(b[1]) for b in t[1])
                return [f"{where}: expected one of {allowed}, got {value!r}"]
            return min(tried, key=len)
        if t[0] == "array":
            if not isinstance(value, list):
                return [f"{where}: expected a list, got {type(value).__name__}"]
            return [e for i, v in enumerate(value) for e in self.errors(v, t[1], f"{path}[{i}]")]
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {type(value).__name__}"]
        if t[0] == "map":
            return [e for k, v in value.items() for e in self.errors(v, t[1], f"{path}.{k}")]
        fields = self.fields(t)
        out = [
            f"{path}.{name}: missing required field" if path else f"{name}: missing required field"
            for name, (_, required) in fields.items()
            if required and name not in value
        ]
        for key, item in value.items():
            at = f"{path}.{key}" if path else key
            if key not in fields:
                out.append(f"{at}: unknown field")
            else:
                out += self.errors(item, fields[key][0], at)
        return out

    def document_errors(self, doc: dict[str, Any]) -> list[str]:
        return self.errors(doc, self.kind(doc.get("apiVersion", ""), doc.get("kind", "")))


@functools.cache
def ts_models() -> TsModels:
    return TsModels()


def manifest_errors(doc: dict[str, Any]) -> list[str]:
    """Every unknown field, wrong type and missing required field of one rendered document."""
    api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    if api.startswith("serving.kserve.io/"):
        import kserve.models

        return Walker(kserve.models).errors(doc, f"V1beta1{kind}")
    if api.startswith("kubeflow.org/") and kind == "Experiment":
        return experiment_errors(doc)
    return ts_models().document_errors(doc)
