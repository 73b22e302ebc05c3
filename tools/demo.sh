#!/usr/bin/env bash
# Install the library and run its demo: a FastHTML app on http://127.0.0.1:5001/ that
# archives a real folder (default: the Python standard library) with a plugin worker.
#
# Usage: tools/demo.sh [DEMO_OPTIONS...]    (see: tools/demo.sh --help)
# Installs, when missing or when pyproject.toml changed: a Python 3.12 virtual environment
# in .venv with the package, and the pinned front-end files in .cache/assets (npm), which
# the page loads from the app itself, so the demo also works on a machine without internet.
# Ctrl-C cancels a running job and stops the demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "tools/demo.sh: $*" >&2; exit 1; }

# Print a Python 3.12 interpreter that runs: pyenv's 3.12 builds first, then python3.12 on PATH.
# A pyenv shim on PATH can exist without a 3.12 selected, so each candidate is run, not just found.
find_python312() {
    local candidate
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 "$(command -v python3.12 || true)"; do
        if [ -x "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

venv=.venv
if [ ! -x "$venv/bin/python" ]; then
    python="$(find_python312)" || die "Python 3.12 not found; install it (for example: pyenv install 3.12) and rerun."
    "$python" -m venv "$venv"
fi

# Reinstall only when pyproject.toml changed since the last install, so a restart is quick and
# works without the package index.
stamp="$venv/.demo-install-stamp"
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || ! "$venv/bin/python" -c 'import cjm_fasthtml_job_monitor' 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e .
    echo "$wanted" > "$stamp"
fi

"$venv/bin/python" tools/assets.py --check >/dev/null 2>&1 || {
    command -v npm >/dev/null || die "npm not found; install Node.js and npm, then rerun."
    "$venv/bin/python" tools/assets.py
}
exec "$venv/bin/python" -m cjm_fasthtml_job_monitor.demo --assets .cache/assets "$@"
