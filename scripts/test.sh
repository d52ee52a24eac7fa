#!/usr/bin/env bash
# Set up (scripts/setup.sh), start the PostgreSQL server the distributed-tuning test needs, lint, run the tests.
# This is what CI runs (.ci/run). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if [ -z "${SB3AV_TEST_POSTGRES_URL:-}" ]; then
    # The distributed-tuning test needs a PostgreSQL server: CI must have one (it fails here without), a developer's
    # machine without root/apt only skips that test.
    if URL="$(bash scripts/start_postgres.sh --url)"; then
        export SB3AV_TEST_POSTGRES_URL="$URL"
    elif [ -n "${CI:-}" ]; then
        echo "scripts/test.sh: could not start PostgreSQL (see above); CI needs it for the distributed-tuning test" >&2
        exit 1
    else
        echo "scripts/test.sh: no PostgreSQL server (see above): the distributed-tuning test will be skipped" >&2
    fi
fi
.venv/bin/ruff check sb3_av tests benchmarks train.py enjoy.py
.venv/bin/mypy sb3_av
export SDL_VIDEODRIVER=offscreen
.venv/bin/python -m pytest -q -ra "$@"
