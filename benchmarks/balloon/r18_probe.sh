#!/usr/bin/env bash
# One probe of issue 34 (reports/detection/balloon-r18-probes.md): det-train of the ResNet-18 balloon config on core 1,
# holding the shared core-1 lock, 1 thread; resumes the run's latest epoch checkpoint when it exists, so a long probe
# is run as several calls of at most ~15 min (EPOCHS 24 with STOP_AFTER K: train until epoch K of the 24-epoch
# schedule, then call again with a later K).
#   bash benchmarks/balloon/r18_probe.sh NAME BACKBONE EPOCHS [STOP_AFTER] [KEY=VALUE ...]
# BACKBONE: an rbdc run folder or `none` (random init); KEY=VALUE: more --cfg-options. Work dirs in
# runs/r18-probes/NAME (weights, not committed); launch.json and metrics.json are copied to
# reports/runs/balloon-r18-probes/NAME/ with the resolved config and the log's per-epoch lines. Fine-tuning seed 0
# for all (randomness.seed=0: also the random init's seed).
set -euo pipefail
name=$1 backbone=$2 epochs=$3; shift 3
stop=$epochs
if [[ $# -gt 0 && $1 != *=* ]]; then stop=$1; shift; fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
export RBDC_DATA=${RBDC_DATA:-/work/shared/data} BALLOON_SCALE=${BALLOON_SCALE:-384,256}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
work=runs/r18-probes/$name
resume=()
ls "$work"/epoch_*.pth >/dev/null 2>&1 && resume=(--resume)
# The config's own schedule is 24 epochs: a STOP_AFTER of it keeps that schedule and only ends the loop early;
# another EPOCHS rescales the schedule (det-train --epochs), run whole.
if [[ $epochs == 24 ]]; then sched=(--cfg-options train_cfg.max_epochs="$stop")
elif [[ $stop == "$epochs" ]]; then sched=(--epochs "$epochs" --cfg-options)
else echo "STOP_AFTER needs EPOCHS 24 (the config's schedule)" >&2; exit 2; fi
flock /tmp/core1.lock taskset -c 1 .tox/rbdc/bin/python -m rbdc.detection.train \
  detection/configs/mask-rcnn_r18_fpn_balloon.py --backbone "$backbone" --work-dir "$work" \
  "${resume[@]}" "${sched[@]}" randomness.seed=0 "$@" >> "$work.log" 2>&1
out=reports/runs/balloon-r18-probes/$name
mkdir -p "$out"
cp "$work/launch.json" "$work/metrics.json" "$work/mask-rcnn_r18_fpn_balloon.py" "$out/"  # the last: as resolved
# the log's summary: the last training iteration of each epoch (losses, lr, s/iter) and each validation
grep -E 'Epoch\(train\) +\[[0-9]+\]\[30/31\]|Epoch\(val\) +\[[0-9]+\]\[13/13\]' "$work.log" > "$out/log-summary.txt"
