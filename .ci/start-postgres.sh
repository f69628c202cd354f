#!/usr/bin/env bash
# Install (Debian packages), start PostgreSQL 15 on 127.0.0.1 and create a database and user for the distributed
# tuning and scale-out tests. Prints the connection URL on stdout (everything else goes to stderr), so CI can do:
#
#   export MTL_SUITE_TEST_POSTGRES_URL="$(.ci/start-postgres.sh)"
#
# Idempotent: rerunning it on a started server only checks the user and database. Needs root (apt-get, and
# running commands as the postgres user). The user may create databases: the scale-out test gives the MLflow
# tracking server a fresh backend database of its own on every run (tests/integration/test_scale_out.py).
# Settings: PGPORT (5432), MTL_PG_USER (mtl), MTL_PG_PASSWORD (mtl), MTL_PG_DB (mtl_suite_test).
set -euo pipefail

PORT="${PGPORT:-5432}"
PG_USER="${MTL_PG_USER:-mtl}"
PG_PASSWORD="${MTL_PG_PASSWORD:-mtl}"
PG_DB="${MTL_PG_DB:-mtl_suite_test}"
VERSION=15
CLUSTER=main

log() { echo "start-postgres: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (installs packages and starts the server as user postgres)"
  exit 1
fi

if [ ! -x "/usr/lib/postgresql/${VERSION}/bin/postgres" ]; then
  log "installing postgresql-${VERSION} from the Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "postgresql-${VERSION}" postgresql-client-common >&2
fi

if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "${VERSION} ${CLUSTER}"; then
  log "creating cluster ${VERSION}/${CLUSTER}"
  pg_createcluster "${VERSION}" "${CLUSTER}" --port "${PORT}" >&2
fi
# A drop-in (Debian's postgresql.conf includes conf.d/): pg_conftool mis-quotes an address that looks numeric.
printf "listen_addresses = '127.0.0.1'\n" > "/etc/postgresql/${VERSION}/${CLUSTER}/conf.d/mtl-suite.conf"
pg_conftool "${VERSION}" "${CLUSTER}" set port "${PORT}" >&2
# Two tuning workers plus their heartbeat threads and the test's own checks: the default 100 connections is ample.

if pg_lsclusters -h | awk -v v="${VERSION}" -v c="${CLUSTER}" '$1 == v && $2 == c {print $4}' | grep -q online; then
  log "cluster ${VERSION}/${CLUSTER} already running"
else
  log "starting cluster ${VERSION}/${CLUSTER} on 127.0.0.1:${PORT}"
  pg_ctlcluster "${VERSION}" "${CLUSTER}" start >&2
fi

for _ in $(seq 1 30); do
  if pg_isready -q -h 127.0.0.1 -p "${PORT}"; then break; fi
  sleep 1
done
pg_isready -h 127.0.0.1 -p "${PORT}" >&2 || { log "server did not become ready on 127.0.0.1:${PORT}"; exit 1; }

# From /: the postgres user may not enter the working directory (a private temp clone in CI).
as_postgres() { (cd / && runuser -u postgres -- "$@"); }
as_postgres psql -q -p "${PORT}" -v ON_ERROR_STOP=1 -d postgres >&2 <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${PG_USER}') THEN
    CREATE ROLE "${PG_USER}" LOGIN CREATEDB PASSWORD '${PG_PASSWORD}';
  ELSE
    ALTER ROLE "${PG_USER}" LOGIN CREATEDB PASSWORD '${PG_PASSWORD}';
  END IF;
END
\$\$;
SQL
if ! as_postgres psql -p "${PORT}" -tAc "SELECT 1 FROM pg_database WHERE datname = '${PG_DB}'" | grep -q 1; then
  as_postgres createdb -p "${PORT}" -O "${PG_USER}" "${PG_DB}" >&2
fi

URL="postgresql://${PG_USER}:${PG_PASSWORD}@127.0.0.1:${PORT}/${PG_DB}"
PGPASSWORD="${PG_PASSWORD}" psql -q -h 127.0.0.1 -p "${PORT}" -U "${PG_USER}" -d "${PG_DB}" -c "SELECT 1" >/dev/null
log "ready: ${URL}"
echo "${URL}"
