#!/usr/bin/env bash
# Install what the tests need, check that the notebooks and the package agree,
# then run the notebook tests and pytest. The last line printed is
# "N passed, N failed" over pytest's tests and the notebooks together.
#
# Usage: tools/test.sh [PYTEST_ARGUMENTS...]
# Installs, when missing: Debian's chromium (apt, needs root or sudo), a Python
# 3.12 virtual environment in .venv with `pip install -e ".[dev]"`, and the pinned
# front-end packages in .cache/assets (npm). Output goes to test-artifacts/.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

artifacts="$repo_root/test-artifacts"
venv="$repo_root/.venv"
package_dir="cjm_fasthtml_job_monitor"
started_at=$SECONDS

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'tools/test.sh: %s\n' "$*" >&2; exit 1; }

# Run a command as root, through sudo when this shell is not root.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "'$*' needs root and sudo is not installed; run it as root, then rerun this script."
    fi
}

apt_updated=false
apt_install() {
    if [ "$apt_updated" = false ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# Print the path of a Python 3.12 interpreter: pyenv's newest 3.12.x first, then python3.12 on PATH.
find_python312() {
    local candidates=()
    local pyenv_root
    for pyenv_root in "${PYENV_ROOT:-}" "${HOME:-}/.pyenv" /root/.pyenv; do
        [ -n "$pyenv_root" ] && [ -d "$pyenv_root/versions" ] || continue
        while IFS= read -r candidate; do
            candidates+=("$candidate")
        done < <(ls -d "$pyenv_root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -rV)
    done
    if command -v python3.12 >/dev/null; then
        candidates+=("$(command -v python3.12)")
    fi

    local candidate
    for candidate in "${candidates[@]}"; do
        if [ -x "$candidate" ] && "$candidate" -c 'import sys, venv; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# --- Install ------------------------------------------------------------------------------------

step "System packages"
if [ ! -x /usr/bin/chromium ]; then
    echo "Installing Debian's chromium for the browser tests"
    apt_install chromium
fi
if ! command -v npm >/dev/null; then
    echo "Installing Node.js and npm for the front-end asset cache"
    apt_install nodejs npm
fi
# Debian's chromium wrapper script prints a harmless shell error on stderr here.
/usr/bin/chromium --version 2>/dev/null
echo "node $(node --version), npm $(npm --version)"

step "Python 3.12 virtual environment in .venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    echo "Using the existing $venv"
else
    python312="$(find_python312)" || die "no Python 3.12 found: looked in \$PYENV_ROOT, ~/.pyenv and /root/.pyenv \
(versions/3.12*/bin/python3.12) and for python3.12 on PATH. Install Python 3.12 (e.g. 'pyenv install 3.12') and rerun."
    echo "Creating $venv with $python312"
    rm -rf "$venv"
    "$python312" -m venv "$venv"
fi
python="$venv/bin/python"
export PATH="$venv/bin:$PATH"

# Reinstall when pyproject.toml changed since the last install, or when the editable
# install points at another checkout (a copied .venv, say).
install_stamp="$venv/.tools-test-sh-install"
wanted_stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
installed_from="$("$python" -c "import $package_dir, pathlib; print(pathlib.Path($package_dir.__file__).parent.parent)" 2>/dev/null || true)"
if [ "$installed_from" != "$repo_root" ] || [ "$(cat "$install_stamp" 2>/dev/null || true)" != "$wanted_stamp" ]; then
    pip_log="$venv/pip-install.log"
    echo "Installing the package and its dev dependencies (pip install -e .[dev]); output in $pip_log"
    if ! { "$python" -m pip install --upgrade pip && "$python" -m pip install -e ".[dev]"; } >"$pip_log" 2>&1; then
        tail -n 60 "$pip_log"
        die "pip install failed; the full output is in $pip_log"
    fi
    echo "$wanted_stamp" > "$install_stamp"
else
    echo "The package is installed from this checkout and pyproject.toml is unchanged; skipping pip"
fi
"$python" --version

step "Front-end asset cache"
"$python" tools/assets.py

rm -rf "$artifacts"
mkdir -p "$artifacts"
# Tests get a throwaway HOME so that nothing they run writes into the real one.
test_home="$(mktemp -d -t cjm-test-home.XXXXXX)"
trap 'rm -rf "$test_home"' EXIT
failures=()

# --- Notebooks and package agree ----------------------------------------------------------------

# nbdev-clean rewrites notebooks in place, so the check runs in a snapshot of the
# working tree (tracked files and untracked ones that git does not ignore) made into a throwaway
# git repository. In a fresh clone that snapshot is the commit under test.
# Repository checks (the export diff, README drift, the docs site build) count in the final line
# next to the notebooks and pytest's tests.
checks_passed=0
checks_failed=0
step "nbdev-clean and nbdev-export leave no diff"
snapshot="$(mktemp -d -t cjm-export-check.XXXXXX)"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
    if [ -e "$file" ]; then
        mkdir -p "$snapshot/$(dirname "$file")"
        cp -p "$file" "$snapshot/$file"
    fi
done
(
    cd "$snapshot"
    git init -q
    git add -A
    git -c user.name=tools-test-sh -c user.email=tools-test-sh@localhost commit -q -m snapshot
    nbdev-clean
    nbdev-export
)
export_changes="$(git -C "$snapshot" status --porcelain -- nbs "$package_dir")"
if [ -n "$export_changes" ]; then
    echo "nbdev-clean or nbdev-export changed these files; run both and commit the result:"
    echo "$export_changes"
    git -C "$snapshot" --no-pager diff --stat -- nbs "$package_dir"
    git -C "$snapshot" --no-pager diff -- nbs "$package_dir" | tee "$artifacts/export-diff.txt" | head -n 400
    failures+=("nbdev-clean/nbdev-export left a diff")
    checks_failed=$((checks_failed + 1))
else
    echo "No diff."
    checks_passed=$((checks_passed + 1))
fi
rm -rf "$snapshot"

# --- Notebook tests ------------------------------------------------------------------------------

# nbdev-test exits 0 and prints nothing useful when it finds no notebook, so the
# notebooks are listed here (with nbdev's own glob) and tested one at a time.
step "nbdev-test, one notebook at a time"
mapfile -t notebooks < <("$python" -c 'from nbdev.doclinks import nbglob; print("\n".join(sorted(nbglob())))')
notebooks_passed=0
notebooks_failed=0
failed_notebooks=()
mkdir -p "$artifacts/notebooks"
for notebook in "${notebooks[@]}"; do
    [ -n "$notebook" ] || continue
    name="${notebook#"$repo_root/nbs/"}"
    log_file="$artifacts/notebooks/${name//\//__}.log"
    notebook_started=$SECONDS
    if HOME="$test_home" nbdev-test "$notebook" >"$log_file" 2>&1 \
        && ! grep -q "No files were eligible for testing" "$log_file"; then
        notebooks_passed=$((notebooks_passed + 1))
        echo "passed  $name ($((SECONDS - notebook_started)) s)"
    else
        notebooks_failed=$((notebooks_failed + 1))
        failed_notebooks+=("$name")
        echo "FAILED  $name ($((SECONDS - notebook_started)) s); its output:"
        sed 's/^/    /' "$log_file" | tail -n 60
    fi
done
if [ "${#notebooks[@]}" -eq 0 ] || [ -z "${notebooks[0]}" ]; then
    echo "No notebooks found under nbs/."
fi
if [ "$notebooks_failed" -gt 0 ]; then
    failures+=("notebooks failed: ${failed_notebooks[*]}")
fi

# --- Documentation -------------------------------------------------------------------------------

step "Documentation: README.md matches nbs/index.ipynb, and the site builds"
if "$python" tools/readme.py --check; then
    checks_passed=$((checks_passed + 1))
else
    failures+=("README.md differs from nbs/index.ipynb: run python tools/readme.py")
    checks_failed=$((checks_failed + 1))
fi
if HOME="$test_home" "$python" tools/site.py --out "$artifacts/site"; then
    checks_passed=$((checks_passed + 1))
else
    failures+=("tools/site.py could not build the docs site or found broken links")
    checks_failed=$((checks_failed + 1))
fi

# --- pytest ------------------------------------------------------------------------------------

step "pytest"
junit_xml="$artifacts/pytest-junit.xml"
set +e
HOME="$test_home" "$python" -m pytest -ra --junitxml="$junit_xml" "$@" 2>&1 | tee "$artifacts/pytest-output.txt"
pytest_status=${PIPESTATUS[0]}
set -e

pytest_passed=0
pytest_failed=0
pytest_skipped=0
if [ -f "$junit_xml" ]; then
    read -r pytest_passed pytest_failed pytest_skipped < <("$python" - "$junit_xml" <<'PY'
import sys
import xml.etree.ElementTree as ElementTree

root = ElementTree.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
total = failed = skipped = 0
for suite in suites:
    total += int(suite.get("tests", 0))
    failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped += int(suite.get("skipped", 0))
print(total - failed - skipped, failed, skipped)
PY
    )
fi
# Exit code 5 means pytest collected no test, which is not a failure of any test.
if [ "$pytest_status" -ne 0 ] && [ "$pytest_status" -ne 5 ]; then
    failures+=("pytest exited with code $pytest_status")
    if [ "$pytest_failed" -eq 0 ]; then
        # pytest stopped before recording a failure (a usage or collection error, an interrupt).
        pytest_failed=1
    fi
fi

# --- Summary -------------------------------------------------------------------------------------

step "Summary ($((SECONDS - started_at)) s)"
echo "checks:    $checks_passed passed, $checks_failed failed (export diff, README, docs site)"
echo "notebooks: $notebooks_passed passed, $notebooks_failed failed"
echo "pytest:    $pytest_passed passed, $pytest_failed failed, $pytest_skipped skipped (junit xml: $junit_xml)"
for failure in "${failures[@]}"; do
    echo "FAILED: $failure"
done

passed=$((checks_passed + notebooks_passed + pytest_passed))
failed=$((checks_failed + notebooks_failed + pytest_failed))
summary="$passed passed, $failed failed"
if [ "$pytest_skipped" -gt 0 ]; then
    summary+=", $pytest_skipped skipped"
fi
echo "$summary"
[ "${#failures[@]}" -eq 0 ]
