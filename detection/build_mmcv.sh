#!/usr/bin/env bash
# Build mmcv 2.1.0 *with its compiled ops* (RoIAlign, NMS, ...) against the torch of the current Python, once per
# machine. PyPI has no mmcv wheels for torch 2.14, so it compiles from the sdist (~25 min on 2 cores).
# The wheel lands in a wheelhouse keyed by the torch version and is reused by every later install (tox, CI).
#
# Patches to mmcv 2.1.0's setup.py, and why:
#   * -std=c++17 -> -std=c++20: torch 2.14's headers `#error` on anything older than C++20.
#   * build without isolation, with setuptools<81 already installed: setup.py imports pkg_resources (gone in 81).
# mmdet 3.3.0 asserts mmcv < 2.2.0, which is why 2.1.0 is the version and not 2.2.x.
set -euo pipefail
PY=${PYTHON:-python}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
TORCH_VERSION=$($PY -c 'import torch; print(torch.__version__.split("+")[0])')
WHEELHOUSE=${RBDC_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/rbdc/wheelhouse/torch-$TORCH_VERSION}
mkdir -p "$WHEELHOUSE"
if ls "$WHEELHOUSE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
  echo "mmcv $MMCV_VERSION wheel already built for torch $TORCH_VERSION: $WHEELHOUSE"
  exit 0
fi
$PY -m pip install -q "setuptools>=77.0.3,<81" wheel ninja
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$PY -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$work" "mmcv==$MMCV_VERSION"
tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
src="$work/mmcv-$MMCV_VERSION"
sed -i 's/-std=c++17/-std=c++20/g; s/std=c++14/std=c++20/g' "$src/setup.py"
grep -q 'c++20' "$src/setup.py" || { echo "patch of setup.py failed: no c++20 flag" >&2; exit 1; }
echo "building mmcv $MMCV_VERSION with ops for torch $TORCH_VERSION (about 25 min on 2 cores) ..."
MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} $PY -m pip wheel --no-build-isolation --no-deps -w "$WHEELHOUSE" "$src"
ls "$WHEELHOUSE"
