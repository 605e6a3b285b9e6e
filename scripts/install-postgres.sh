#!/usr/bin/env bash
# Installs Debian's PostgreSQL server where it is missing. The package's own cluster ("15
# main", port 5432) is neither created nor started: 5432 is the Gateway's port, and SPG99's
# workers run a server of their own for every database.
set -euo pipefail

if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing PostgreSQL (Debian's postgresql package)" >&2
$sudo mkdir -p /etc/postgresql-common
echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
# No service may start while the package installs (Debian's policy-rc.d convention).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
  -o Dpkg::Options::=--force-confold postgresql >/dev/null
