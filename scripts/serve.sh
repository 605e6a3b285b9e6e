#!/usr/bin/env bash
# Runs SPG99 on its embedded default: the control plane (API on 127.0.0.1:8080), the Gateway
# (PostgreSQL clients on 127.0.0.1:5432, its transaction pooler on 127.0.0.1:6432) and a local
# worker running PostgreSQL for every database, all in one process, data in ./data, every
# database kept in the storage repository ./data/storage by pgBackRest. Installs PostgreSQL and
# pgBackRest where they are missing (PostgreSQL's own cluster is never started). Arguments go
# to `spg99 serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-engines.sh
exec cargo run --release -- serve "$@"
