#!/usr/bin/env bash
# Set up (scripts/setup.sh), start the PostgreSQL server the distributed-tuning test needs, lint, run the tests.
# This is what CI runs (.ci/run). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if [ -z "${SB3AV_TEST_POSTGRES_URL:-}" ]; then
    SB3AV_TEST_POSTGRES_URL="$(bash scripts/start_postgres.sh --url)"
    export SB3AV_TEST_POSTGRES_URL
fi
.venv/bin/ruff check sb3_av tests benchmarks train.py enjoy.py
export SDL_VIDEODRIVER=offscreen
.venv/bin/python -m pytest -q -ra "$@"
