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
  # This workplace's pip prints a harmless notice per package about a missing local index;
  # hide only that line, keep everything else, and keep pip's own exit status.
  local out rc
  out=$(.venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1) \
    && rc=0 || rc=$?
  printf '%s\n' "$out" | grep -v "^WARNING: Location 'file:" | grep -v '^$' || true
  return "$rc"
}
