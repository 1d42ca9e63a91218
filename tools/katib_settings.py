"""Extract which algorithm settings Katib's suggestion services accept, from Katib's source at the
pinned tag, into tests/upstream/katib-suggestion-settings.json.

Katib routes each algorithm to a suggestion service image (katib-config's runtime.suggestions);
each service validates an Experiment's algorithmSettings before any trial runs, and a setting it
rejects fails the Suggestion. The local runner (mlstack.tune) must accept exactly what that
service accepts: tests/unit/test_tune_katib_settings.py checks its table against this file.

What is recorded, per algorithm: the service, and per setting the service's own acceptance test
as it reads the value, as data. For the Python services (hyperopt, optuna, skopt) it is read from
the expression of their ``validate_algorithm_spec`` branch (``ast`` of service.py): how the value
is parsed (Python's int() or float()) and the bounds it must meet, or the values it must be one
of; a setting the branch does not name is rejected. For the Go service (goptuna) it is how its
converter parses the value (strconv.Atoi: int, strconv.ParseFloat: float, string comparisons: one
of those values), a setting it does not name being ignored. No code of Katib's is kept.

    python tools/katib_settings.py --katib-git DIR > tests/upstream/katib-suggestion-settings.json
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

TAG = "v0.19.0"
CONFIG = "manifests/v1beta1/installs/katib-standalone/katib-config.yaml"
PYTHON_SERVICES = {
    "hyperopt": "pkg/suggestion/v1beta1/hyperopt/service.py",
    "optuna": "pkg/suggestion/v1beta1/optuna/service.py",
    "skopt": "pkg/suggestion/v1beta1/skopt/service.py",
}
GOPTUNA = "pkg/suggestion/v1beta1/goptuna/converter.go"
EARLY_STOPPING = {"medianstop": "pkg/earlystopping/v1beta1/medianstop/service.py"}


class Katib:
    def __init__(self, git: Path) -> None:
        self.git = git
        self.files: dict[str, str] = {}

    def show(self, path: str) -> str:
        data = subprocess.run(
            ["git", "-C", str(self.git), "show", f"{TAG}:{path}"], check=True, capture_output=True
        ).stdout
        self.files[path] = hashlib.sha256(data).hexdigest()
        return data.decode()


def routing(katib: Katib, kind: str = "suggestions") -> dict[str, str]:
    """algorithm name -> service, from the image katib-config names for it (runtime.suggestions
    or runtime.earlyStoppings)."""
    config = yaml.safe_load(katib.show(CONFIG))
    out = {}
    for entry in config["runtime"][kind]:
        image = entry["image"].rsplit("/", 1)[-1].split(":")[0]  # suggestion-hyperopt
        out[entry["algorithmName"]] = image.removeprefix("suggestion-")
    return out


def _names(test: ast.expr) -> list[str] | None:
    """The setting names an ``if s.name == "x"`` / ``if s.name in [...]`` test selects."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, op, right = test.left, test.ops[0], test.comparators[0]
    if not (isinstance(left, ast.Attribute) and left.attr == "name"):
        return None
    if isinstance(op, ast.Eq) and isinstance(right, ast.Constant):
        return [right.value]
    if isinstance(op, ast.In) and isinstance(right, (ast.List, ast.Tuple, ast.Set)):
        return [e.value for e in right.elts if isinstance(e, ast.Constant)]
    return None


def _acceptance(body: list[ast.stmt]) -> str:
    """The branch's test of ``s.value``: ``if not X: return False`` accepts when X; ``if X:
    return False`` accepts when not X; no test accepts anything."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            returns_false = any(
                isinstance(s, ast.Return)
                and isinstance(s.value, ast.Tuple)
                and isinstance(s.value.elts[0], ast.Constant)
                and s.value.elts[0].value is False
                for s in stmt.body
            )
            if not returns_false:
                continue
            if isinstance(stmt.test, ast.UnaryOp) and isinstance(stmt.test.op, ast.Not):
                return ast.unparse(stmt.test.operand)
            return f"not ({ast.unparse(stmt.test)})"
    return "True"


COMPARE = {ast.Gt: ">", ast.GtE: ">=", ast.Lt: "<", ast.LtE: "<="}
FLIP = {">": "<", ">=": "<=", "<": ">", "<=": ">="}


def _check(test: str, item: str) -> dict[str, Any]:
    """An acceptance test as data: how the value is parsed (Python's int() or float(); one that
    does not parse is rejected) and the bounds it must meet, or the values it must be one of;
    {} when anything is accepted. A form this script does not know stops it."""
    tree = ast.parse(test, mode="eval").body
    value = f"{item}.value"
    if isinstance(tree, ast.Constant) and tree.value is True:
        return {}
    if (
        isinstance(tree, ast.UnaryOp)
        and isinstance(tree.op, ast.Not)
        and isinstance(tree.operand, ast.Compare)
        and [type(o) for o in tree.operand.ops] == [ast.NotIn]
        and ast.unparse(tree.operand.left) == value
        and isinstance(tree.operand.comparators[0], (ast.List, ast.Tuple, ast.Set))
    ):
        return {"one_of": [e.value for e in tree.operand.comparators[0].elts]}
    if isinstance(tree, ast.Compare):
        terms = [tree.left, *tree.comparators]
        parsed = [
            t.func.id
            for t in terms
            if isinstance(t, ast.Call) and isinstance(t.func, ast.Name)
            and t.func.id in ("int", "float") and [ast.unparse(a) for a in t.args] == [value]
        ]  # fmt: skip
        if len(parsed) == 1 and all(type(o) in COMPARE for o in tree.ops):
            bounds = []
            for left, op, right in zip(terms, tree.ops, terms[1:], strict=False):
                if isinstance(left, ast.Call) and isinstance(right, ast.Constant):
                    bounds.append([COMPARE[type(op)], right.value])
                elif isinstance(right, ast.Call) and isinstance(left, ast.Constant):
                    bounds.append([FLIP[COMPARE[type(op)]], left.value])
                else:
                    sys.exit(f"acceptance test not understood: {test}")
            return {"parse": parsed[0], "bounds": bounds}
    sys.exit(f"acceptance test not understood: {test}")


def _validator(method: ast.FunctionDef) -> dict[str, Any]:
    """The settings a validator names, each with its acceptance test, and the name its loop
    gives a setting (the tests read ``<item>.value``)."""
    loop = next(n for n in ast.walk(method) if isinstance(n, ast.For))
    item = loop.target.id if isinstance(loop.target, ast.Name) else "s"
    settings: dict[str, str] = {}
    for node in ast.walk(method):
        if not isinstance(node, ast.If):
            continue
        chain: ast.stmt | None = node
        while isinstance(chain, ast.If):
            names = _names(chain.test)
            if names is None:
                break
            for name in names:
                settings.setdefault(name, _acceptance(chain.body))
            chain = chain.orelse[0] if len(chain.orelse) == 1 else None
        if settings:
            break
    return {
        "settings": {k: {"accept": _check(v, item)} for k, v in settings.items()},
        "unknown": "rejected",
    }


def python_service(
    katib: Katib,
    path: str,
    cls_name: str = "OptimizerConfiguration",
    dispatch: str = "validate_algorithm_spec",
) -> dict[str, dict[str, Any]]:
    """algorithm -> validator, from the service's dispatch on the algorithm name."""
    tree = ast.parse(katib.show(path))
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls_name)
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    out: dict[str, dict[str, Any]] = {}
    for node in ast.walk(methods[dispatch]):
        if not isinstance(node, ast.If):
            continue
        tests = node.test.values if isinstance(node.test, ast.BoolOp) else [node.test]
        algos = [
            t.comparators[0].value
            for t in tests
            if isinstance(t, ast.Compare) and isinstance(t.comparators[0], ast.Constant)
        ]
        called = [
            c.func.attr
            for c in ast.walk(node.body[0])
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
        ]
        target = next((m for m in called if m in methods), None)
        for algo in algos:
            if target and algo not in out:
                out[algo] = {"validator": f"{path}:{target}", **_validator(methods[target])}
    return out


def goptuna_service(katib: Katib) -> dict[str, dict[str, Any]]:
    """algorithm -> how toGoptunaSampler parses each setting (unknown names are ignored)."""
    source = katib.show(GOPTUNA)
    body = source[source.index("func toGoptunaSampler") :]
    body = body[: body.index("\n}\n")]
    constants = {"AlgorithmCMAES": "cmaes", "AlgorithmTPE": "tpe", "AlgorithmSobol": "sobol"}
    branches = re.split(r"\n\t(?:if|\} else if) name == (\w+) \{|\n\t\} else \{", body)
    out: dict[str, dict[str, Any]] = {}
    # re.split with one group: [preamble, const1, body1, const2, body2, ..., None?, else-body]
    parts = branches[1:]
    pairs = []
    i = 0
    while i < len(parts):
        if parts[i] in constants:
            pairs.append((constants[parts[i]], parts[i + 1]))
            i += 2
        else:
            pairs.append(("random", parts[i] if parts[i] is not None else parts[i + 1]))
            i += 2 if parts[i] is None else 1
    for algo, text in pairs:
        settings: dict[str, Any] = {}
        for m in re.finditer(r's\.Name == "(\w+)" \{(.*?)\n\t\t\t\}', text, re.S):
            name, block = m.group(1), m.group(2)
            if "strconv.Atoi" in block:
                settings[name] = {"parse": "int"}
            elif "strconv.ParseFloat" in block:
                settings[name] = {"parse": "float"}
            else:
                values = re.findall(r's\.Value [!=]= "(\w+)"', block)
                settings[name] = {"one_of": sorted(set(values))}
        out[algo] = {
            "validator": f"{GOPTUNA}:toGoptunaSampler",
            "settings": settings,
            "unknown": "ignored",
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--katib-git", type=Path, required=True, help="a clone of kubeflow/katib")
    katib = Katib(ap.parse_args().katib_git)
    routes = routing(katib)
    services = {name: python_service(katib, path) for name, path in PYTHON_SERVICES.items()}
    services["goptuna"] = goptuna_service(katib)
    algorithms = {}
    for algo, service in routes.items():
        entry: dict[str, Any] = {"service": service}
        if service in services:
            if algo not in services[service]:
                raise SystemExit(f"{service} does not validate {algo}")
            entry.update(services[service][algo])
        algorithms[algo] = entry
    early = {}
    for algo, service in routing(katib, "earlyStoppings").items():
        validators = python_service(
            katib, EARLY_STOPPING[algo], "MedianStopService", "validate_early_stopping_spec"
        )
        early[algo] = {"service": service, **validators[algo]}
    json.dump(
        {
            "about": "Katib's suggestion services and the algorithm settings each accepts, "
            "extracted by tools/katib_settings.py",
            "repo": "kubeflow/katib",
            "tag": TAG,
            "licence": "Apache-2.0",
            "files": dict(sorted(katib.files.items())),
            "algorithms": algorithms,
            "early_stopping": early,
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
