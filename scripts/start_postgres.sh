#!/usr/bin/env bash
# Start a local PostgreSQL server for distributed tuning (train.py -optimize --storage URL) and its test.
#
#   eval "$(scripts/start_postgres.sh)"      # exports SB3AV_TEST_POSTGRES_URL=postgresql://...@127.0.0.1:PORT/DB
#   scripts/start_postgres.sh --url          # prints only the URL
# (run it, do not `source` it: it uses `set -e` and `exit`).
#
# Idempotent: installs the Debian package `postgresql` with apt-get when no server is installed, creates (once)
# and starts the cluster (Debian's pg_ctlcluster, which runs the server as the `postgres` user, so it works when
# run as root), waits until it accepts connections on 127.0.0.1, then creates the role and the database if they
# do not exist. Settings (environment): SB3AV_PG_USER (sb3av), SB3AV_PG_PASSWORD (sb3av), SB3AV_PG_DB (sb3av),
# SB3AV_PG_PORT (5432, for a new cluster; an existing cluster keeps its port). Logs go to stderr.
set -euo pipefail

PG_USER="${SB3AV_PG_USER:-sb3av}"
PG_PASSWORD="${SB3AV_PG_PASSWORD:-sb3av}"
PG_DB="${SB3AV_PG_DB:-sb3av}"
PG_PORT="${SB3AV_PG_PORT:-5432}"
CLUSTER="main"

log() { echo "start_postgres: $*" >&2; }
die() { log "error: $*"; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -n -u postgres "$@"; fi; }

case "$PG_USER$PG_DB" in *[!a-zA-Z0-9_]*) die "SB3AV_PG_USER / SB3AV_PG_DB may only hold letters, digits and _";; esac
case "$PG_PASSWORD" in *"'"*) die "SB3AV_PG_PASSWORD must not contain a single quote";; esac

# 1. Install the server when missing (Debian/Ubuntu).
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is not available; install a PostgreSQL server"
    log "installing postgresql with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
[ -n "$VERSION" ] || die "no PostgreSQL version under /usr/lib/postgresql"

# 2. Create the cluster once (the package usually creates `main`).
if ! pg_lsclusters -h 2>/dev/null | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {found=1} END {exit !found}'; then
    log "creating cluster $VERSION/$CLUSTER on port $PG_PORT"
    as_root pg_createcluster --port "$PG_PORT" "$VERSION" "$CLUSTER" >&2
fi
PORT="$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $3}')"
STATUS="$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $4}')"

# 3. Start it (no systemd needed: pg_ctlcluster drops to the postgres user itself).
if [ "$STATUS" != "online" ]; then
    log "starting cluster $VERSION/$CLUSTER on port $PORT"
    as_root pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$CLUSTER" start >&2 2>/dev/null \
        || as_root pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PORT" && break
    sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || die "the server does not accept connections on 127.0.0.1:$PORT (see /var/log/postgresql/)"

# 4. Role and database, once.
psql_admin() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres "$@"; }
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != "1" ]; then
    log "creating role $PG_USER"
    psql_admin -c "CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD'" >&2
fi
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != "1" ]; then
    log "creating database $PG_DB"
    psql_admin -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >&2
fi

URL="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PORT/$PG_DB"
if [ "${1:-}" = "--url" ]; then
    echo "$URL"
else
    echo "export SB3AV_TEST_POSTGRES_URL='$URL'"
fi
