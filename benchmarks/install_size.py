"""Size and install time of the base install (`pip install .`) and of `[local]` (torch==2.13.0 first, then
`pip install '.[local]'`), each in a fresh venv made here, from this checkout.

    python benchmarks/install_size.py [--keep DIR]

pip's cache is used as a user's would be (say so when reporting: a cold cache adds the downloads). Prints one
line per install: seconds, MB on disk (the venv, `du`), and whether torch/transformers/onnx are importable.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import importlib.util as u; "
         "print(*[m for m in ('torch','transformers','onnx','matplotlib') if u.find_spec(m)])")


def size_mb(path: Path) -> float:
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
               .stdout.split()[0]) / 1024


def install(where: Path, steps: list[list[str]]) -> float:
    venv.create(where, with_pip=True)
    started = time.monotonic()
    for args in steps:
        subprocess.run([str(where / "bin/python"), "-m", "pip", "install", "-q", *args], check=True)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="make the venvs here and keep them")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="mlcluster-install-"))
    cases = {"base": [[str(ROOT)]], "local": [["torch==2.13.0"], [f"{ROOT}[local]"]]}
    print(f"{'install':8} {'seconds':>8} {'MB':>8}  model stack importable")
    for name, steps in cases.items():
        where = root / name
        seconds = install(where, steps)
        found = subprocess.run([str(where / "bin/python"), "-c", PROBE], capture_output=True, text=True).stdout.strip()
        print(f"{name:8} {seconds:8.1f} {size_mb(where):8.0f}  {found or '-'}", flush=True)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(root)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
