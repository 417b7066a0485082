#!/usr/bin/env bash
# Build mmcv 2.1.0 *with its compiled ops* (RoIAlign, NMS, ...) against the torch of the current Python, once per
# machine. PyPI has no mmcv wheels for torch 2.14, so it compiles from the sdist (~25-40 min on 2 cores).
# The wheel lands in a wheelhouse keyed by the torch version (and the CUDA version when CUDA ops are built) and is
# reused by every later install (detection/install.sh, tox, CI).
#
#   bash detection/build_mmcv.sh                     # build unless the wheelhouse already has the wheel
#   bash detection/build_mmcv.sh --print-wheelhouse  # only print the wheelhouse folder for this torch
#
# Environment: PYTHON (default python), MMCV_VERSION (2.1.0), MAX_JOBS (2 compile jobs), RBDC_WHEELHOUSE (override
# the folder), FORCE_CUDA=1 (build CUDA ops without a visible GPU; needs nvcc).
#
# Patches to mmcv 2.1.0's setup.py, and why:
#   * -std=c++17 -> -std=c++20: torch 2.14's headers `#error` on anything older than C++20.
#   * build without isolation, with setuptools<81 already installed: setup.py imports pkg_resources (gone in 81).
# mmdet 3.3.0 asserts mmcv < 2.2.0, which is why 2.1.0 is the version and not 2.2.x.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
# mmcv compiles against the torch of $PY: without one, say where a Python with torch comes from (not a traceback).
if ! torch_error=$("$PY" -c 'import torch' 2>&1); then
  echo "detection: $PY ($(command -v "$PY" || echo 'not found')) cannot import torch (${torch_error##*$'\n'}); run" \
    "\`tox -e detection\` (it installs torch into .tox/rbdc, then this stack), or set PYTHON to a Python that has" \
    "torch, e.g. PYTHON=.tox/rbdc/bin/python bash detection/install.sh" >&2
  exit 2
fi
# mmcv's setup.py compiles CUDA ops when torch sees a GPU or FORCE_CUDA=1: such a wheel gets its own folder, so a
# CPU-only wheel is never picked up on a GPU machine (rbdc doctor would report the missing CUDA ops).
KEY=$($PY -c 'import os, shutil, torch
v = torch.__version__.split("+")[0]
cuda = torch.version.cuda and (torch.cuda.is_available() or os.environ.get("FORCE_CUDA") == "1") \
    and (shutil.which("nvcc") or os.environ.get("CUDA_HOME"))
print(f"torch-{v}" + ("-cu" + torch.version.cuda.replace(".", "") if cuda else ""))')
WHEELHOUSE=${RBDC_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/rbdc/wheelhouse/$KEY}
if [[ "${1:-}" == "--print-wheelhouse" ]]; then
  echo "$WHEELHOUSE"
  exit 0
fi
mkdir -p "$WHEELHOUSE"
# One build per machine even when several tox envs or CI jobs start at once: the others wait here, then reuse it.
exec 9>"$WHEELHOUSE/.build.lock"
flock 9
if ls "$WHEELHOUSE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
  echo "mmcv $MMCV_VERSION wheel already built ($KEY): $(ls "$WHEELHOUSE"/mmcv-"$MMCV_VERSION"-*.whl)"
  exit 0
fi
start=$SECONDS
$PY -m pip install -q "setuptools>=77.0.3,<81" wheel ninja
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$PY -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$work" "mmcv==$MMCV_VERSION"
tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
src="$work/mmcv-$MMCV_VERSION"
sed -i 's/-std=c++17/-std=c++20/g; s/std=c++14/std=c++20/g' "$src/setup.py"
grep -q 'c++20' "$src/setup.py" || { echo "patch of setup.py failed: no c++20 flag" >&2; exit 1; }
echo "$(date -u +%FT%TZ) building mmcv $MMCV_VERSION with ops ($KEY), MAX_JOBS=${MAX_JOBS:-2} (25-40 min on 2 cores)"
# -v streams the compiler's output into the log, where run_logged.sh finds ninja's progress lines.
MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} bash "$here/run_logged.sh" "$WHEELHOUSE/mmcv-$MMCV_VERSION-build.log" \
  "$PY" -m pip wheel -v --no-build-isolation --no-deps -w "$WHEELHOUSE" "$src"
echo "$(date -u +%FT%TZ) built in $((SECONDS - start)) s: $(ls "$WHEELHOUSE"/mmcv-"$MMCV_VERSION"-*.whl)"
