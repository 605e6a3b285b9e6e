#!/usr/bin/env bash
# Installs the engines the platform runs where they are missing, from Debian's packages:
# PostgreSQL (the workers run a server of their own for every database; the package's own
# cluster, "15 main" on port 5432, is neither created nor started: 5432 is the Gateway's) and
# pgBackRest (which keeps every database in the storage repository).
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v pgbackrest >/dev/null 2>&1 || missing+=(pgbackrest)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${missing[*]} (Debian's packages)" >&2
$sudo mkdir -p /etc/postgresql-common
echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
# No service may start while the packages install (Debian's policy-rc.d convention).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
  -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
