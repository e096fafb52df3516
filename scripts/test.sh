#!/usr/bin/env bash
# Run the test suite; also against PostgreSQL when one answers (PIXMO_TEST_POSTGRES_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PIXMO_TEST_POSTGRES_URL:-}" ]; then
  url="postgresql+psycopg://postgres@127.0.0.1:5432/test"
  if .venv/bin/python - "$url" <<'PY' 2>/dev/null
import sys, psycopg
psycopg.connect(sys.argv[1].replace("+psycopg", ""), connect_timeout=3).close()
PY
  then
    export PIXMO_TEST_POSTGRES_URL="$url"
    echo "tests: SQLite and PostgreSQL ($url)"
  else
    echo "tests: SQLite only (no PostgreSQL answered on 127.0.0.1:5432)"
  fi
fi
exec .venv/bin/python -m pytest "$@"
