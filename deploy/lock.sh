#!/usr/bin/env bash
# Regenerate requirements.lock: every package of `pip install '.[test]'` and of the build
# backend, pinned (==). CI (.ci/run, through PIP_CONSTRAINT) and the image (Dockerfile) both
# install under it, so they run the same versions. pip-compile keeps the pins already in the
# file; pass --upgrade (or --upgrade-package NAME) to move them.
#
# No --hash lines: pip turns hash checking on for a whole install as soon as one constraint
# carries a hash, and then refuses the editable install of CI's command (`pip install -e`).
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q pip-tools
CUSTOM_COMPILE_COMMAND="deploy/lock.sh" "$tools/venv/bin/pip-compile" --quiet --extra test --all-build-deps --strip-extras \
  --allow-unsafe --annotation-style line --no-emit-index-url --no-emit-find-links \
  --output-file requirements.lock "$@" pyproject.toml
