#!/usr/bin/env bash
# The main job on the embedded defaults: SQLite and a blob folder under ./pixmo-data.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIXMO_ENV="${PIXMO_ENV:-dev}"
px=.venv/bin/pixmo
$px init
$px demo --images "${PIXMO_DEMO_IMAGES:-12}"
$px stats
