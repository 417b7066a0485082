#!/usr/bin/env bash
# Install the detection stack (the `detection` extra: mmengine, mmcv with ops, mmdet, pycocotools) into the Python
# given by $PYTHON (default: python on PATH), which must already have torch.
#
#   bash detection/install.sh            # build mmcv once per machine if needed, then install the extra
#   PYTHON=.venv/bin/python bash detection/install.sh
#   tox -e detection                     # the same into tox's env, .tox/rbdc (torch included), then the tests
#
# mmcv has no wheel for torch 2.14 on PyPI: build_mmcv.sh compiles one into a wheelhouse keyed by the torch version
# (~25-40 min on 2 cores, once); this script then installs from that wheelhouse and refuses to fall back to building
# mmcv's sdist (which fails on torch 2.14 without the patches in build_mmcv.sh). See detection/README.md.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
PY=${PYTHON:-python}
start=$SECONDS

WHEELHOUSE=$(bash "$here/build_mmcv.sh" --print-wheelhouse)
bash "$here/build_mmcv.sh"
# The pins live in one place, pyproject.toml's `detection` extra; installed without reinstalling rbdc itself.
mapfile -t reqs < <("$PY" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["detection"]))' \
  "$repo/pyproject.toml")

# --only-binary mmcv: use the built wheel or fail, never compile mmcv's unpatched sdist behind the user's back.
# setuptools<81: mmengine 0.10.7 resolves `mmdet::` config paths with pkg_resources, removed in setuptools 81.
PIP_FIND_LINKS="$WHEELHOUSE${PIP_FIND_LINKS:+ $PIP_FIND_LINKS}" \
  "$PY" -m pip install --only-binary mmcv "setuptools>=77.0.3,<81" "${reqs[@]}"
echo "detection stack installed in $((SECONDS - start)) s; checking it:"
cd "$repo" && "$PY" -m rbdc.cli doctor
# The stack lives in this Python only (under tox: .tox/rbdc/bin/python): say so, or `rbdc` on PATH misses it.
echo "installed into $(command -v "$PY"): run the detection commands with it, e.g. $PY -m rbdc.cli det-train CONFIG" \
  "(or $(dirname "$(command -v "$PY")")/rbdc det-train CONFIG, or tox -e detection-cli -- det-train CONFIG)"
