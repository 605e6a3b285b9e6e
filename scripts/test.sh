#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need when it is missing:
# strace, which the durability test uses to watch the server's fdatasync calls.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v strace >/dev/null 2>&1; then
  echo "installing strace (needed by the durability test)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq strace >/dev/null
fi

exec cargo test --workspace "$@"
