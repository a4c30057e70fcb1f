# Shared by scripts/demo and scripts/test: make .venv and install the package into it.
# Sourced, not run. Idempotent: a second run only checks that everything is installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "sqlbridge needs Python 3.11 or later; '$PYTHON' is $("$PYTHON" --version 2>&1)." >&2
  echo "Set PYTHON=/path/to/python3.11 and run again." >&2
  exit 3
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    echo "python3 -m venv failed: on Debian install it with: apt-get install python3-venv" >&2
    exit 3
  fi
fi
pip_install() {
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | grep -v "^WARNING: Location 'file:" || true
  # grep hides only that harmless notice; pip's own status decides success.
  .venv/bin/python -m pip check >/dev/null 2>&1 || .venv/bin/python -m pip check
}
