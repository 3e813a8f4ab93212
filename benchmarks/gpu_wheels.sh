#!/usr/bin/env bash
# The wheel kit for `make gpu-smoke` on a GPU machine that has a CUDA torch but no network: downloads, for
# CPython 3.12 on manylinux x86-64, every wheel posweep needs beyond torch and its own dependencies, at the
# versions installed here (the tested set), prints their total size and the one-line install command.
#
#   benchmarks/gpu_wheels.sh [DIR]        (default .gpu-wheels/, git-ignored; PY=python to choose the env)
#
# Assumed already on the GPU machine: torch (a CUDA build) and what it depends on (filelock, fsspec, jinja2,
# markupsafe, networkx, sympy, mpmath, typing-extensions, setuptools, triton, nvidia-*), and numpy (every
# CUDA torch image ships it). Those of torch's dependencies that posweep's need too are carried as spares
# (DIR/spare.txt, with setuptools to build posweep): pip takes them only where the machine's own versions do
# not satisfy a requirement. DIR/requirements.txt is what gets installed. Everything else posweep imports, directly or through its dependencies, is in
# the kit, except the packages named in HAVE (space-separated) and what only they need: for a machine that
# has them already, e.g. HAVE="pyarrow pandas matplotlib pillow" (pyarrow alone is 55 MB; matplotlib serves
# only `posweep report`). The environment running this script must have posweep installed (`make install`).
set -euo pipefail
DIR=${1:-.gpu-wheels}
PY=${PY:-python3}
mkdir -p "$DIR"
rm -f "$DIR"/*.whl
"$PY" - "$DIR/requirements.txt" "${HAVE:-}" <<'PYEOF'
import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement

ON_GPU_MACHINE = {"torch", "numpy"}
TARGET = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root, stop=frozenset()):
    found = {}

    def walk(name):
        name = key(name)
        if name in found or name in stop:
            return
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            return
        found[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(TARGET):
                walk(req.name)

    walk(root)
    return found


torch_deps = set(closure("torch"))
have = {"torch"} | ON_GPU_MACHINE | {key(name) for name in sys.argv[2].split()}
reached = {name: version for name, version in closure("posweep", frozenset(have)).items() if name != "posweep"}
wanted = {name: version for name, version in reached.items() if name not in torch_deps}
# torch's own dependencies that posweep's need too: carried, but taken only where the machine's do not fit
spare = {name: version for name, version in reached.items() if name in torch_deps}
spare["setuptools"] = md.version("setuptools")  # builds posweep itself from the carried source
with open(sys.argv[1], "w") as out:
    out.writelines(f"{name}=={version}\n" for name, version in sorted(wanted.items()))
with open(sys.argv[1].replace("requirements", "spare"), "w") as out:
    out.writelines(f"{name}=={version}\n" for name, version in sorted(spare.items()))
PYEOF
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  --dest "$DIR" -r "$DIR/requirements.txt" -r "$DIR/spare.txt"
echo "assumed on the GPU machine: torch and its dependencies, numpy${HAVE:+, $HAVE}"
echo "wheels ($(cat "$DIR"/requirements.txt "$DIR"/spare.txt | wc -l) packages, CPython 3.12 manylinux x86-64) in $DIR:"
cat "$DIR"/requirements.txt "$DIR"/spare.txt | tr '\n' ' '
echo
du -cb "$DIR"/*.whl | sort -n | tail -6
total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
echo "total: $((total / 1048576)) MiB ($total bytes; limit 64 MiB)"
echo "install on the GPU machine (from the repository root, the kit carried in $DIR):"
echo "  python -m pip install --no-index --find-links $DIR -r $DIR/requirements.txt && python -m pip install --no-index --find-links $DIR --no-deps ."
