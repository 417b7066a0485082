#!/usr/bin/env bash
# Run a chatty command (the mmcv compile) with its whole output in a log file and only progress on the terminal:
# a line per compiled source ("[mm:ss] 12/95 nms.cpp", from ninja's "[n/m]" lines), pip's wheel lines, and on
# failure the log's tail. Exits with the command's status.
#
#   bash detection/run_logged.sh LOG CMD [ARG...]
set -uo pipefail
log=$1
shift
mkdir -p "$(dirname "$log")"
echo "full log: $log"
start=$SECONDS
"$@" 2>&1 | tee "$log" | while IFS= read -r line; do
  el=$((SECONDS - start))
  if [[ $line =~ ^[[:space:]]*\[([0-9]+)/([0-9]+)\] ]]; then
    step="${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
    src=""
    # the source is the last -c argument (torch's ninja rules pass "-c -c FILE")
    [[ $line =~ [[:space:]]-c[[:space:]]+([^-[:space:]][^[:space:]]*) ]] && src=$(basename -- "${BASH_REMATCH[1]}")
    printf '[%02d:%02d] %s %s\n' $((el / 60)) $((el % 60)) "$step" "$src"
  elif [[ $line =~ (Created\ wheel|Successfully\ built|Building\ wheel) ]]; then
    printf '[%02d:%02d] %s\n' $((el / 60)) $((el % 60)) "${line#"${line%%[![:space:]]*}"}"
  fi
done
status=${PIPESTATUS[0]}
if ((status)); then
  echo "--- failed (exit $status); the last lines of $log:" >&2
  tail -n 40 "$log" >&2
fi
exit "$status"
