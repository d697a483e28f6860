#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtual environment outside the source tree, and train on
# the pets embedded in it: proves the wheel carries its code, its data and its entry point.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip install -q "build>=1.2,<2"
python -m build --wheel --outdir "$work/dist" "$root" >/dev/null
wheel=("$work"/dist/latentflows-*.whl)
echo "== wheel: $(basename "${wheel[0]}") ($(du -h "${wheel[0]}" | cut -f1))"
python3 -m venv "$work/venv"
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build
"$work/venv/bin/python" -m pip install -q torch==2.13.0
"$work/venv/bin/python" -m pip install -q "${wheel[0]}"
cd "$work"  # nothing of the source tree is importable from here
"$work/venv/bin/python" -c "import latentflows, pathlib; assert 'site-packages' in latentflows.__file__, latentflows.__file__"
"$work/venv/bin/latentflows" train --limit 64 --ae-epochs 1 --flow-epochs 1 --out "$work/run" --no-progress
test -s "$work/run/model.safetensors"
echo "== the wheel installs and trains on its embedded data"
