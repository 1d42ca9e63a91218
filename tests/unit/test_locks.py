"""The images' hashed requirement locks (locks/*.txt, scripts/locks.sh): every entry pinned and
hashed, the pins constraints.txt's, each image's lock the whole closure of its requirement set; and
pip really refuses a file whose hash the lock does not name.

Each check is a function returning its findings, run on the real locks (none) and on an edited copy
(one)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "locks"
DOCKERFILES = {
    "training": ROOT / "components" / "Dockerfile",
    "predictor": ROOT / "serving" / "Dockerfile",
    "mlflow": ROOT / "manifests" / "platform" / "mlflow-image" / "Dockerfile",
}
# the images' interpreter: Python 3.11 on x86_64 Linux (scripts/locks.sh compiles for it)
TARGET = {
    **default_environment(),
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """A hashed requirements file as {name: (version, [sha256, ...])}; an entry that is not
    ``name==version`` gets version ""."""
    entries: dict[str, tuple[str, list[str]]] = {}
    logical = re.sub(r"\\\n", " ", text)
    for line in logical.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec = line.split(" --hash", 1)[0].strip()
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})\b", line)
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", spec)
        name = match.group(1) if match else re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]
        entries[canonicalize_name(name)] = (match.group(2) if match else "", hashes)
    return entries


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[canonicalize_name(name)] = version.strip()
    return found


def lock(key: str) -> dict[str, tuple[str, list[str]]]:
    return parse_lock((LOCKS / f"{key}.txt").read_text())


def hash_errors(entries: dict[str, tuple[str, list[str]]]) -> list[str]:
    """Entries not pinned to one version, or without a sha256."""
    errors = [f"{n}: not pinned with ==" for n, (v, _) in entries.items() if not v]
    errors += [f"{n}: no --hash=sha256" for n, (_, h) in entries.items() if not h]
    return errors


def constraint_errors(
    entries: dict[str, tuple[str, list[str]]], extra: dict[str, str]
) -> list[str]:
    """Pins that differ from constraints.txt's (or, for a package it does not pin, from the
    lock's own .in pins), and packages neither pins."""
    constraints = pins(ROOT / "constraints.txt")
    errors = []
    for name, (version, _) in entries.items():
        if name in constraints:
            if constraints[name] != version:
                errors.append(f"{name}=={version}: constraints.txt pins {constraints[name]}")
        elif name not in extra:
            errors.append(f"{name}=={version}: pinned by neither constraints.txt nor locks/*.in")
        elif extra[name] != version:
            errors.append(f"{name}=={version}: locks/*.in pins {extra[name]}")
    return errors


EXTRAS = {
    "training": ("platform", "pipeline", "features"),
    "predictor": ("serving",),
    "transformer": ("serving", "features"),
}
OVERRIDES = {
    "predictor": LOCKS / "predictor-overrides.txt",
    "transformer": LOCKS / "predictor-overrides.txt",
}


def requirement_set(key: str) -> list[Requirement]:
    """What scripts/locks.sh compiles the image's lock from."""
    if key == "mlflow":
        lines = (LOCKS / "mlflow.in").read_text().splitlines()
    else:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        lines = list(project["dependencies"])
        for extra in EXTRAS[key]:
            lines += project["optional-dependencies"][extra]
        lines += (LOCKS / "build.in").read_text().splitlines()
    return [Requirement(x) for x in (ln.split("#", 1)[0].strip() for ln in lines) if x]


def removed(key: str) -> set[str]:
    """The requirements the image's overrides file removes (a marker that never holds)."""
    path = OVERRIDES.get(key)
    if path is None:
        return set()
    found = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert req.marker and not req.marker.evaluate(TARGET), f"{line}: not a removal"
            found.add(canonicalize_name(req.name))
    return found


def closure(requirements: list[Requirement], without: set[str] = frozenset()) -> set[str]:
    """The distributions these requirements need on the images' Python, read from the metadata
    of this environment (make setup installs constraints.txt's versions, the locks' pins);
    ``without``: names removed (with what only they need), as uv's overrides remove them."""
    seen: set[tuple[str, str]] = set()
    todo = [(r, "") for r in requirements]
    names: set[str] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({**TARGET, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name in without:
            continue
        names.add(name)
        for wanted in ("", *req.extras):
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            for line in importlib.metadata.requires(req.name) or []:
                todo.append((Requirement(line), wanted))
    return names


def closure_errors(key: str, entries: dict[str, tuple[str, list[str]]]) -> list[str]:
    """Packages the requirement set needs that the lock lacks, and lock entries nothing needs."""
    needed = closure(requirement_set(key), removed(key))
    errors = [f"{n}: needed, not in locks/{key}.txt" for n in sorted(needed - set(entries))]
    errors += [f"{n}: in locks/{key}.txt, needed by nothing" for n in sorted(set(entries) - needed)]
    return errors


def in_pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in LOCKS.glob("*.in"):
        found.update(pins(path))
    return found


@pytest.mark.reliability("unhashed-lock-entry")
@pytest.mark.parametrize("key", ["training", "predictor", "transformer", "mlflow", "sbom", "build"])
def test_every_lock_entry_is_pinned_and_hashed(key):
    entries = lock(key)
    assert entries and hash_errors(entries) == []
    # an edited copy: an entry without its hashes, one not pinned, are each found
    text = (LOCKS / f"{key}.txt").read_text()
    first = next(iter(entries))
    stripped = re.sub(r"(?m)^(\S+==\S+) \\\n(\s+--hash=\S+( \\)?\n)+", r"\1\n", text, count=1)
    assert hash_errors(parse_lock(stripped)) == [f"{first}: no --hash=sha256"]
    loose = re.sub(r"(?m)^(\S+)==\S+ \\$", r"\1>=0 \\", text, count=1)
    assert hash_errors(parse_lock(loose)) == [f"{first}: not pinned with =="]


@pytest.mark.reliability("stale-lock-detected")
@pytest.mark.parametrize("key", ["training", "predictor", "transformer", "mlflow", "sbom", "build"])
def test_locks_pin_what_constraints_txt_pins(key):
    entries = lock(key)
    extra = in_pins() if key in ("sbom", "build", "training", "predictor", "transformer") else {}
    if key == "sbom":
        # the SBOM tool's own closure (never in an image) is the tool's: constraints.txt's pins
        # still hold for every package both name
        extra = {n: v for n, (v, _) in entries.items() if n not in pins(ROOT / "constraints.txt")}
    assert constraint_errors(entries, extra) == []
    # a stale copy: constraints.txt (or a .in file) moved a pin the lock still has at the old
    # version; a package neither pins
    name, (version, hashes) = next(iter(entries.items()))
    source = "constraints.txt" if name in pins(ROOT / "constraints.txt") else "locks/*.in"
    stale = {**entries, name: (version + ".post999", hashes)}
    assert constraint_errors(stale, extra) == [
        f"{name}=={version}.post999: {source} pins {version}"
    ]
    foreign = {**entries, "left-over": ("1.0", ["0" * 64])}
    assert constraint_errors(foreign, extra) == [
        "left-over==1.0: pinned by neither constraints.txt nor locks/*.in"
    ]


@pytest.mark.reliability("lock-closure-incomplete")
@pytest.mark.parametrize("key", ["training", "predictor", "transformer", "mlflow"])
def test_each_image_lock_is_the_whole_closure_of_its_requirement_set(key):
    entries = lock(key)
    assert closure_errors(key, entries) == []
    # a requirement added to the set (as an edit of pyproject.toml's extra would) and an entry
    # the set no longer needs are each found
    missing = next(iter(sorted(entries)))
    assert closure_errors(key, {n: e for n, e in entries.items() if n != missing}) == [
        f"{missing}: needed, not in locks/{key}.txt"
    ]
    extra = {**entries, "left-over": ("1.0", ["0" * 64])}
    assert closure_errors(key, extra) == [f"left-over: in locks/{key}.txt, needed by nothing"]


# what the predictor never imports (issue 15): the platform's client and server stack
PLATFORM_ONLY = {"mlflow", "mlflow-skinny", "mlflow-tracing", "pyarrow", "matplotlib", "sqlalchemy",
                 "alembic", "databricks-sdk", "flask", "gunicorn", "graphene", "ruamel-yaml", "kfp"}  # fmt: skip


def test_the_predictor_lock_is_the_serving_closure_only():
    entries = lock("predictor")
    assert {"kserve", "onnxruntime", "scikit-learn", "skops", "pyyaml"} <= set(entries)
    assert set(entries) & PLATFORM_ONLY == set()
    assert set(entries) & removed("predictor") == set()
    # the training image keeps the platform stack (the platform extra)
    assert {"mlflow", "ruamel-yaml", "kfp", "onnx", "skl2onnx"} <= set(lock("training"))


def imports_of(dist: str) -> set[str]:
    """Top-level module names a distribution's own .py files import (import/from lines)."""
    found: set[str] = set()
    for file in importlib.metadata.files(dist) or []:
        if file.suffix == ".py":
            text = Path(file.locate()).read_text(errors="replace")
            found |= set(re.findall(r"(?m)^\s*(?:from|import)\s+([A-Za-z_]\w*)", text))
    return found


def requires(line: str, name: str) -> bool:
    """Whether a requirement line is one on ``name`` that holds without extras on the target."""
    req = Requirement(line)
    held = req.marker is None or req.marker.evaluate({**TARGET, "extra": ""})
    return held and canonicalize_name(req.name) == name


def removal_errors(key: str, without: set[str]) -> list[str]:
    """A removed requirement that nothing in the set requires (a stale override), or that a
    distribution requiring it imports (the image would fail at that import)."""
    full = closure(requirement_set(key))
    modules: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            modules.setdefault(canonicalize_name(dist), set()).add(module)
    errors = []
    for name in sorted(without):
        if name not in full:
            errors.append(f"{name}: removed, but nothing in the {key} set requires it")
            continue
        requirers = [
            d
            for d in sorted(full - {name})
            if any(requires(r, name) for r in importlib.metadata.requires(d) or [])
        ]
        for dist in requirers:
            if modules.get(name, set()) & imports_of(dist):
                errors.append(f"{name}: removed, but {dist} imports it")
    return errors


@pytest.mark.reliability("predictor-removed-requirement-imported")
def test_each_requirement_the_predictor_lock_removes_is_never_imported_by_its_requirer():
    without = removed("predictor")
    assert without and removal_errors("predictor", without) == []
    # removing one kserve imports (kubernetes: kserve/api) or one nothing needs is each found
    assert removal_errors("predictor", {"kubernetes"}) == [
        "kubernetes: removed, but kserve imports it"
    ]
    assert removal_errors("predictor", {"pyarrow"}) == [
        "pyarrow: removed, but nothing in the predictor set requires it"
    ]


def test_the_images_pip_check_accepts_only_what_the_overrides_remove():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import pip_check
    finally:
        sys.path.pop(0)
    accepted = pip_check.dropped(OVERRIDES["predictor"])
    assert accepted == removed("predictor")
    report = "kserve 0.21.0 requires pillow, which is not installed.\n" \
             "kserve 0.21.0 requires aiohttp, which is not installed.\n"  # fmt: skip
    assert pip_check.broken(report, accepted) == ([], report.splitlines())
    other = "kserve 0.21.0 requires kubernetes, which is not installed."
    wrong = "kserve 0.21.0 has requirement numpy<3.0.0,>=1.26.0, but you have numpy 3.1.0."
    assert pip_check.broken(f"{other}\n{wrong}", accepted) == ([other, wrong], [])
    assert pip_check.broken("No broken requirements found.", accepted) == ([], [])


def test_the_build_backend_is_locked_alike_everywhere():
    backend = lock("build")
    assert set(backend) == {"setuptools"}
    for key in ("training", "predictor", "transformer"):
        assert lock(key)["setuptools"] == backend["setuptools"]


@pytest.mark.parametrize("key", ["training", "predictor", "mlflow"])
def test_dockerfiles_install_only_from_their_hashed_lock(key):
    text = re.sub(r"\\\n", " ", DOCKERFILES[key].read_text())
    installs = [
        " ".join(part.split())
        for line in text.splitlines()
        if line.startswith("RUN")
        for part in re.split(r"&&", line)
        if re.search(r"\bpip install\b", part)
    ]
    locked = [i for i in installs if "--require-hashes --no-deps" in i]
    assert any(i.endswith(f"-r locks/{key}.txt") or i.endswith(f"/{key}.txt") for i in locked)
    # the only other install is the project's own source, with nothing more
    others = [i for i in installs if i not in locked]
    assert all(
        i.endswith("pip install --no-cache-dir --no-deps --no-build-isolation .") for i in others
    )
    assert len(others) == (0 if key == "mlflow" else 1)
    copied = re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M)
    sources = " ".join(copied)
    assert f"locks/{key}.txt" in sources
    # the locks come before the source: a source edit reinstalls no dependency
    if key != "mlflow":
        assert text.index(f"locks/{key}.txt") < text.index("COPY mlstack")
        assert "locks/build.txt" in sources


def _wheel(directory: Path, name: str = "mlstack_probe", version: str = "1.0") -> Path:
    """A minimal valid wheel of an empty package."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as whl:
        for member, data in files.items():
            whl.writestr(member, data)
        whl.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in [*files, f"{info}/RECORD"]))
    return path


def _pip_install(lock_file: Path, wheels: Path, target: Path) -> subprocess.CompletedProcess[str]:
    """What the Dockerfiles run, against a local wheel directory only."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--isolated", "install", "--quiet"),
            *("--no-index", "--find-links", str(wheels), "--target", str(target)),
            *("--require-hashes", "--no-deps", "-r", str(lock_file)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.reliability("unhashed-install-refused")
def test_pip_refuses_a_file_whose_hash_the_lock_does_not_name(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = _wheel(wheels)
    good = hashlib.sha256(wheel.read_bytes()).hexdigest()
    lock_file = tmp_path / "lock.txt"

    lock_file.write_text(f"mlstack-probe==1.0 \\\n    --hash=sha256:{good}\n")
    done = _pip_install(lock_file, wheels, tmp_path / "ok")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ok" / "mlstack_probe" / "__init__.py").is_file()

    # the index served other bytes than the lock names: refused, nothing installed
    lock_file.write_text(f"mlstack-probe==1.0 \\\n    --hash=sha256:{'0' * 64}\n")
    done = _pip_install(lock_file, wheels, tmp_path / "tampered")
    assert done.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in done.stderr
    assert not (tmp_path / "tampered" / "mlstack_probe").exists()

    # an entry with no hash at all: refused
    lock_file.write_text("mlstack-probe==1.0\n")
    done = _pip_install(lock_file, wheels, tmp_path / "unhashed")
    assert done.returncode != 0 and "Hashes are required in --require-hashes mode" in done.stderr
