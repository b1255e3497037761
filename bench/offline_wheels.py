"""Wheels of ablate's dependencies for a node without network (a GPU node of an air-gapped
cluster): every distribution ablate needs, at the version installed here, that the node lacks,
for the node's Python and platform.

    python bench/offline_wheels.py wheels/ --have node-packages.txt [--python 3.12] [--extras eval]
        on the node:  python3 -m pip list --format=freeze > node-packages.txt   (copied here)
        then there:   pip install --no-index --no-deps --target SITE wheels/*.whl   (bench/gpu_check.sh
                      does this with ABLATE_WHEELS=wheels/)

The closure is read from this environment's metadata (ablate's requirements, recursively, with
their environment markers evaluated for the node's Python), less torch and its CUDA libraries (the
node's own build is kept), less every name in --have. Pure-Python projects published only as
source are built into wheels here. Prints what it fetched and the total size.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

KEEP_THE_NODES = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")  # built for the node's GPU stack
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def closure(root: str, extras: set[str], python: str) -> dict[str, str]:
    """{canonical name: installed version} of `root` and everything it requires, recursively."""
    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0"}
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset]] = set()
    todo = [(root, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        if (key, wanted) in seen or (key in found and not wanted):
            continue
        seen.add((key, wanted))
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"error: {name} is required but not installed here; install ablate's environment "
                             "first") from None
        found[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in (wanted or {""})):
                todo.append((req.name, frozenset(req.extras)))
    return found


def have(path: Path | None) -> dict[str, str | None]:
    """{canonical name: version, where the line pins one} of what the node has."""
    if path is None:
        return {}
    names: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            names[canonicalize_name(re.split(r"[<>~!@ ;\[]", name, maxsplit=1)[0])] = version.strip() or None
    return names


def fetch(name: str, version: str, out: Path, python: str) -> str:
    """Download the wheel of name==version for the node, or build one from the source here."""
    pins = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(out), f"{name}=={version}"]
    binary = [*pins, "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
              *(a for p in PLATFORMS for a in ("--platform", p))]
    if subprocess.run(binary, capture_output=True).returncode == 0:
        return "wheel"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out),
                            f"{name}=={version}"], capture_output=True, text=True)
    if built.returncode != 0:
        raise SystemExit(f"error: {name}=={version}: no wheel for Python {python} and it does not build here:\n"
                         + built.stderr[-2000:])
    return "built"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory for the wheels")
    parser.add_argument("--have", type=Path, help="the node's `pip list --format=freeze` (or one name per line)")
    parser.add_argument("--python", default="3.12", help="the node's Python, major.minor")
    parser.add_argument("--extras", default="", help="ablate's extras to include too, comma-separated")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python):
        parser.error(f"--python={args.python}: a major.minor version such as 3.12")
    if args.have is not None and not args.have.is_file():
        parser.error(f"--have={args.have}: no such file")
    needed = closure("ablate", {e for e in args.extras.split(",") if e}, args.python)
    node = have(args.have)
    todo = {n: v for n, v in sorted(needed.items()) if n not in node and n != "ablate" and not KEEP_THE_NODES.match(n)}
    for name, version in sorted(node.items()):  # kept as the node has them: a difference may matter
        if name in needed and version and version != needed[name]:
            print(f"{name}: the node has {version}, this environment {needed[name]} (the node's is kept)")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, version in todo.items():
        print(f"{name}=={version}: {fetch(name, version, args.out, args.python)}", flush=True)
    size = sum(p.stat().st_size for p in args.out.glob("*.whl"))
    print(f"{len(todo)} of {len(needed)} distributions fetched into {args.out} ({size / 2**20:.1f} MiB); "
          f"{len(needed) - len(todo)} are the node's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
