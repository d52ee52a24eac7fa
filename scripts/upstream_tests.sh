#!/usr/bin/env bash
# Run Stable-Baselines3's and sb3-contrib's own tests with TD3, DDPG, SAC and TQC replaced by sb3-av's Clipped classes.
#
# A drop-in check a developer runs by hand (minutes of CPU; not part of scripts/test.sh): it downloads the sdists of
# the installed versions into a temporary folder, writes a conftest.py there that rebinds stable_baselines3.TD3 /
# DDPG / SAC and sb3_contrib.TQC to sb3_av's classes before the test modules import them, and runs only the tests
# parametrized with those classes (pytest names them after the class) or named after them.
#
# Usage: bash scripts/upstream_tests.sh [pytest args]     e.g.  bash scripts/upstream_tests.sh -x
# Env: UPSTREAM_TEST_FILES overrides the files (paths relative to the two extracted sdists' roots).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$PWD/.venv/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

SB3_VERSION="$("$PY" -c 'import stable_baselines3; print(stable_baselines3.__version__)')"
CONTRIB_VERSION="$("$PY" -c 'import sb3_contrib; print(sb3_contrib.__version__)')"
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$WORK" \
    "stable-baselines3==$SB3_VERSION" "sb3-contrib==$CONTRIB_VERSION"
for archive in "$WORK"/*.tar.gz; do tar xzf "$archive" -C "$WORK"; done
mv "$WORK/stable_baselines3-$SB3_VERSION/tests" "$WORK/sb3"
mv "$WORK/sb3_contrib-$CONTRIB_VERSION/tests" "$WORK/contrib"

cat > "$WORK/conftest.py" <<'EOF'
"""Rebind SB3's and sb3-contrib's off-policy actor-critics to sb3-av's before any test module imports them."""
import sb3_contrib
import stable_baselines3

from sb3_av import ClippedDDPG, ClippedSAC, ClippedTD3, ClippedTQC

stable_baselines3.TD3 = ClippedTD3
stable_baselines3.DDPG = ClippedDDPG
stable_baselines3.SAC = ClippedSAC
sb3_contrib.TQC = ClippedTQC
EOF

FILES="${UPSTREAM_TEST_FILES:-sb3/test_her.py sb3/test_dict_env.py sb3/test_save_load.py sb3/test_run.py sb3/test_spaces.py
contrib/test_run.py contrib/test_dict_env.py contrib/test_save_load.py}"
cd "$WORK"
# shellcheck disable=SC2086
SDL_VIDEODRIVER=offscreen "$PY" -m pytest -q -p no:cacheprovider --import-mode=importlib --rootdir "$WORK" \
    --confcutdir "$WORK" -k "Clipped or td3 or ddpg or sac or tqc or her" $FILES "$@"
