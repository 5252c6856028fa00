#!/usr/bin/env bash
# Re-resolve constraints/ci.txt: what a fresh venv gets today for burla and its test tools.
# Then run .ci/run, and move the ceilings in burla/dependencies.py to the new versions.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q -e '.[test]'
{
    echo "# The exact versions CI and development install (bash .ci/run, the README's test command):"
    echo "# what a fresh venv resolved on $(date +%F). burla's own ranges are in pyproject.toml and"
    echo "# burla/dependencies.py; refresh this file with scripts/refresh_constraints.sh."
    "$venv/bin/python" -m pip freeze --exclude-editable | grep -v '^burla'
} > constraints/ci.txt
echo "constraints/ci.txt refreshed; now run bash .ci/run and update burla/dependencies.py"
