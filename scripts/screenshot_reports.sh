#!/usr/bin/env bash
# Build the demo's BadNets and clean models, scan them, write their HTML reports and screenshot both in
# headless Chromium (Debian's `chromium` package: apt-get install chromium). The PNGs land in docs/.
#   bash scripts/screenshot_reports.sh [DEMO_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/demo}
nc=${NC:-.venv/bin/neuralcleanse}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "error: chromium not found (apt-get install chromium)" >&2; exit 1; }
"$nc" demo --out "$out"
for name in badnets clean; do
  profile=$(mktemp -d)
  # no network, no background services: the page must render from the file alone
  "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1280,2300 \
    --screenshot="docs/report_$name.png" "file://$PWD/$out/$name-scan/report.html" 2>/dev/null
  rm -rf "$profile"
  echo "docs/report_$name.png"
done
