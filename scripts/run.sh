#!/usr/bin/env bash
# The main job on the embedded defaults: SQLite and a blob folder under ./pixmo-data, a demo
# project, then the annotation web app.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIXMO_ENV="${PIXMO_ENV:-dev}"
host="${PIXMO_HOST:-127.0.0.1}"
port="${PIXMO_PORT:-8000}"
px=.venv/bin/pixmo
$px init
$px demo --images "${PIXMO_DEMO_IMAGES:-12}"
$px stats
creds="$(.venv/bin/python -c 'from pixmo.demo import DEMO_PASSWORD, DEMO_USERS; print(", ".join(f"{u} ({r})" for u, r in DEMO_USERS)); print(DEMO_PASSWORD)')"
echo
echo "PixMo annotation app: http://${host}:${port}/   (API docs: http://${host}:${port}/docs)"
echo "  demo users: $(echo "$creds" | head -1)"
echo "  password:   $(echo "$creds" | tail -1)"
echo "  stop with Ctrl+C"
echo
exec $px serve --host "$host" --port "$port"
