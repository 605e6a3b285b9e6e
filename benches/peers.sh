#!/usr/bin/env bash
# benches/peers.sh: benchmarks SPG99 against the stores a user would pick instead of it:
# PostgreSQL (an `events` table, synchronous_commit=on, fsync=on) and etcd (`put`, WAL fsync on
# every commit, its default).
#
# What it does, each run from scratch:
#   1. Installs whatever is missing, from Debian's packages only (apt-get update runs only when
#      something must be installed): `postgresql` (server + psql; binaries under
#      /usr/lib/postgresql/<ver>/bin), `etcd-server` (bookworm's name for the etcd daemon;
#      plain `etcd` on older releases), and `curl` / `python3` if absent. The packages' own
#      services are kept from starting during the install (a temporary /usr/sbin/policy-rc.d);
#      a service or cluster that was already running is left alone: ours use their own ports.
#   2. Makes a temp dir (`mktemp -d`, so under $TMPDIR or /tmp: put it on the same kind of disk
#      as target/ or the fsync costs differ; a tmpfs there is warned about) and a trap that stops
#      everything the script started and removes the temp dir on any exit, Ctrl-C included.
#   3. Starts PostgreSQL as the `postgres` user on 127.0.0.1:<free port>, data and socket in the
#      temp dir, production durability (fsync, full_page_writes, synchronous_commit all on),
#      and creates the tables `events` and `dbs`.
#   4. Starts etcd on 127.0.0.1:<free client port>/<free peer port>, data in the temp dir,
#      default durability, an 8 GiB backend quota, no auto-compaction.
#   5. Runs, from the repo root, `cargo bench --bench peers` (with the env below), then
#      `cargo bench --bench sse_fanout` and `cargo bench --bench rebuild`, and assembles their
#      stdout (markdown tables) under a header describing the machine into
#      target/bench/peers.md ($CARGO_TARGET_DIR/bench/peers.md when that is set), whose path it
#      prints last. Raw figures: target/bench/peers.json etc., written by the benchmarks.
#
# Env exported to `cargo bench --bench peers`:
#   SPG99_PEER_PG         libpq key/value string: host=127.0.0.1 port=P user=postgres dbname=postgres
#   SPG99_PEER_PG_PID     the postmaster's pid (sum CPU/RSS over it and its children)
#   SPG99_PEER_ETCD       etcd's JSON gateway incl. the API prefix, e.g. http://127.0.0.1:P/v3
#   SPG99_PEER_ETCD_PID   etcd's pid
#   SPG99_PEER_VERSIONS   one line, e.g. "PostgreSQL 15.18, etcd 3.4.23"
# Honoured, not touched: SPG99_BENCH_SECS (seconds per cell) and the benchmarks' other settings.
#
# Run as root (it installs packages and runs PostgreSQL as the `postgres` user):
#   benches/peers.sh
#   SPG99_BENCH_SECS=5 benches/peers.sh
#   SPG99_PEERS_DRY=1 benches/peers.sh   # dry mode: no cargo; install, start both servers, one
#                                        # INSERT via psql and one put via curl, stop, clean up.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY="${SPG99_PEERS_DRY:-0}"
[ "$DRY" = "0" ] && DRY=""

WORK=""          # the temp dir
PG_BIN=""        # /usr/lib/postgresql/<ver>/bin
PG_WRAPPER=""    # pid of the runuser that runs the postmaster
PG_PID=""        # the postmaster
ETCD_BIN=""
ETCD_PID=""
BENCH_PID=""     # leader of the process group of the running benchmark
POLICY_RC=""     # /usr/sbin/policy-rc.d when this script created it
SIGNALED=""      # set when a signal ended the run (no server logs shown then)

log() { echo "peers.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- cleanup ---------------------------------------------------------------------------------

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# wait_gone PID SECONDS: true once PID has exited, false if it is still there after SECONDS.
wait_gone() {
  local pid="$1" i
  for ((i = 0; i < $2 * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  ! alive "$pid"
}

stop_bench() {
  alive "$BENCH_PID" || return 0
  log "stopping the running benchmark (process group $BENCH_PID)"
  kill -TERM -- "-$BENCH_PID" 2>/dev/null || true
  wait_gone "$BENCH_PID" 10 || kill -KILL -- "-$BENCH_PID" 2>/dev/null || true
  # The benchmark's own children (spg99 servers) share its process group.
  sleep 0.2
  kill -KILL -- "-$BENCH_PID" 2>/dev/null || true
}

stop_postgres() {
  [ -n "$PG_WRAPPER" ] || return 0
  local pid="$PG_PID"
  # Stopped before postmaster.pid was read: the postmaster is runuser's only child.
  [ -n "$pid" ] || pid="$(awk '{ print $1 }' "/proc/$PG_WRAPPER/task/$PG_WRAPPER/children" 2>/dev/null || true)"
  if alive "$pid"; then
    log "stopping PostgreSQL (pid $pid)"
    kill -INT "$pid" 2>/dev/null || true # fast shutdown
    wait_gone "$pid" 30 || { log "PostgreSQL still up, killing it"; kill -KILL -- "-$PG_WRAPPER" 2>/dev/null || true; }
  fi
  if alive "$PG_WRAPPER"; then
    kill -TERM -- "-$PG_WRAPPER" 2>/dev/null || true
    wait_gone "$PG_WRAPPER" 10 || kill -KILL -- "-$PG_WRAPPER" 2>/dev/null || true
  fi
  wait "$PG_WRAPPER" 2>/dev/null || true
}

stop_etcd() {
  alive "$ETCD_PID" || return 0
  log "stopping etcd (pid $ETCD_PID)"
  kill -TERM "$ETCD_PID" 2>/dev/null || true
  wait_gone "$ETCD_PID" 15 || { log "etcd still up, killing it"; kill -KILL "$ETCD_PID" 2>/dev/null || true; }
  wait "$ETCD_PID" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT
  trap '' INT TERM HUP # a second Ctrl-C must not cut the cleanup short
  set +e
  [ -z "$POLICY_RC" ] || rm -f "$POLICY_RC"
  stop_bench
  stop_postgres
  stop_etcd
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$rc" -ne 0 ] && [ -z "$SIGNALED" ]; then
      for f in "$WORK"/*.log; do
        [ -s "$f" ] || continue
        log "last lines of $(basename "$f"):"
        tail -n 15 "$f" | sed 's/^/    /' >&2
      done
    fi
    rm -rf "$WORK"
    log "removed $WORK"
  fi
  exit "$rc"
}

on_signal() {
  SIGNALED=1
  log "caught SIG$1, cleaning up"
  case "$1" in INT) exit 130 ;; TERM) exit 143 ;; *) exit 129 ;; esac
}

# --- install ---------------------------------------------------------------------------------

find_pg_bin() {
  local d
  d="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  if [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/psql" ] && [ -x "$d/pg_isready" ]; then
    echo "$d"
  fi
}

find_etcd_bin() {
  if command -v etcd >/dev/null 2>&1; then command -v etcd
  elif [ -x /usr/bin/etcd ]; then echo /usr/bin/etcd
  fi
}

install_missing() {
  local want=()
  [ -n "$(find_pg_bin)" ] || want+=(postgresql)
  [ -n "$(find_etcd_bin)" ] || want+=(etcd)
  command -v curl >/dev/null 2>&1 || want+=(curl)
  command -v python3 >/dev/null 2>&1 || want+=(python3)
  if [ "${#want[@]}" -eq 0 ]; then
    log "PostgreSQL, etcd, curl and python3 already installed; nothing to install"
    return
  fi

  log "missing: ${want[*]}; running apt-get update"
  apt-get update -qq

  local pkgs=() p
  for p in "${want[@]}"; do
    if [ "$p" = etcd ]; then
      # bookworm ships the daemon as etcd-server; older releases as etcd.
      if apt-cache show etcd-server >/dev/null 2>&1; then pkgs+=(etcd-server)
      elif apt-cache show etcd >/dev/null 2>&1; then pkgs+=(etcd)
      else die "no etcd package found in the configured Debian mirrors"
      fi
    else
      pkgs+=("$p")
    fi
  done

  # Keep the packages' own services (a postgresql 'main' cluster on :5432, an etcd on :2379)
  # from being started by their maintainer scripts; ours run on their own ports.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    POLICY_RC=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\n# temporary, from spg99 benches/peers.sh\nexit 101\n' >"$POLICY_RC"
    chmod 755 "$POLICY_RC"
  fi
  log "installing: ${pkgs[*]}"
  env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
  if [ -n "$POLICY_RC" ]; then rm -f "$POLICY_RC"; POLICY_RC=""; fi

  [ -n "$(find_pg_bin)" ] || die "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin after install"
  [ -n "$(find_etcd_bin)" ] || die "etcd binary not found after install"
}

# --- servers ---------------------------------------------------------------------------------

# free_ports N: N distinct free loopback TCP ports, space-separated.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

start_postgres() {
  local port="$1" data="$WORK/pg" sock="$WORK/pgsock" i
  install -d -m 700 -o postgres -g postgres "$data"
  install -d -m 755 -o postgres -g postgres "$sock"
  log "initdb $data"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -A trust -U postgres --no-sync \
    -E UTF8 --locale=C >"$WORK/initdb.log" 2>&1 || die "initdb failed"

  log "starting PostgreSQL on 127.0.0.1:$port"
  # setsid: its own process group, so a terminal Ctrl-C reaches only this script, whose trap
  # then shuts the server down in order.
  setsid runuser -u postgres -- "$PG_BIN/postgres" -D "$data" \
    -c listen_addresses=127.0.0.1 -c port="$port" -c unix_socket_directories="$sock" \
    -c max_connections=400 -c shared_buffers=256MB \
    -c synchronous_commit=on -c fsync=on -c full_page_writes=on \
    </dev/null >"$WORK/postgres.log" 2>&1 &
  PG_WRAPPER=$!

  for ((i = 0; i < 600; i++)); do
    alive "$PG_WRAPPER" || die "PostgreSQL exited during startup"
    if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -t 1; then break; fi
    sleep 0.1
  done
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -t 1 || die "PostgreSQL not ready after 60 s"
  PG_PID="$(head -n 1 "$data/postmaster.pid")"
  alive "$PG_PID" || die "postmaster pid $PG_PID from postmaster.pid is not running"

  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres <<'SQL' >&2
CREATE TABLE events (seq bigserial PRIMARY KEY, body bytea NOT NULL);
CREATE TABLE dbs (tenant text NOT NULL, name text NOT NULL, size text NOT NULL, body bytea NOT NULL, PRIMARY KEY (tenant, name));
SQL
  log "PostgreSQL ready (postmaster pid $PG_PID), tables events and dbs created"
}

etcd_put() { # etcd_put BASE_URL_WITH_PREFIX: one put of key=val, prints the response
  curl -sf -m 5 -X POST "$1/kv/put" -d '{"key":"a2V5","value":"dmFs"}'
}

start_etcd() {
  local cport="$1" pport="$2" i p base="http://127.0.0.1:$1"
  log "starting etcd on 127.0.0.1:$cport (peer port $pport)"
  # Default durability: the WAL is fsynced on every commit (no --unsafe-no-fsync).
  # etcd 3.4 refuses to start on arm64 unless told that it may.
  if [ "$(uname -m)" = aarch64 ]; then export ETCD_UNSUPPORTED_ARCH=arm64; fi
  setsid "$ETCD_BIN" \
    --name default --data-dir "$WORK/etcd" \
    --listen-client-urls "$base" --advertise-client-urls "$base" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "default=http://127.0.0.1:$pport" --initial-cluster-state new \
    --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) --auto-compaction-retention 0 \
    --logger zap --log-outputs stderr \
    </dev/null >"$WORK/etcd.log" 2>&1 &
  ETCD_PID=$!

  # etcd 3.4+ serves the JSON gateway at /v3 (and still /v3beta), 3.3 only at /v3beta. Wait
  # until a put succeeds at either, then take /v3 if it works (a put may have reached /v3beta
  # just as the server became ready).
  ETCD_URL=""
  for ((i = 0; i < 300; i++)); do
    alive "$ETCD_PID" || die "etcd exited during startup"
    for p in v3 v3beta; do
      if etcd_put "$base/$p" 2>/dev/null | grep -q '"header"'; then ETCD_URL="$base/$p"; break; fi
    done
    [ -z "$ETCD_URL" ] || break
    sleep 0.2
  done
  [ -n "$ETCD_URL" ] || die "etcd answered no put at $base/v3 or $base/v3beta within 60 s"
  if [ "$ETCD_URL" != "$base/v3" ] && etcd_put "$base/v3" 2>/dev/null | grep -q '"header"'; then
    ETCD_URL="$base/v3"
  fi
  # Leave the store empty for the benchmark (the probe above wrote key=val).
  curl -sf -m 5 -X POST "$ETCD_URL/kv/deleterange" -d '{"key":"a2V5"}' >/dev/null
  log "etcd ready (pid $ETCD_PID) at $ETCD_URL"
}

versions_line() {
  local pgv etv
  pgv="$("$PG_BIN/postgres" --version | sed -n 's/.*(PostgreSQL) \([0-9][0-9.]*\).*/\1/p')"
  etv="$("$ETCD_BIN" --version 2>/dev/null | sed -n 's/^etcd Version: *//p')"
  echo "PostgreSQL ${pgv:-?}, etcd ${etv:-?}"
}

# --- dry mode --------------------------------------------------------------------------------

dry_check() {
  local seq rev
  seq="$("$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 -d "$SPG99_PEER_PG" \
    -c "INSERT INTO events (body) VALUES ('\\x7370673939'::bytea) RETURNING seq")"
  [ "$seq" = 1 ] || die "psql INSERT returned seq '$seq', expected 1"
  log "dry: psql INSERT INTO events -> seq $seq"
  rev="$(curl -sf -m 5 -X POST "$SPG99_PEER_ETCD/kv/put" -d '{"key":"c3BnOTk=","value":"ZHJ5"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')"
  [ -n "$rev" ] || die "etcd put returned no revision"
  log "dry: curl put to $SPG99_PEER_ETCD/kv/put -> revision $rev"
  log "dry: SPG99_PEER_PG='$SPG99_PEER_PG' SPG99_PEER_PG_PID=$SPG99_PEER_PG_PID"
  log "dry: SPG99_PEER_ETCD='$SPG99_PEER_ETCD' SPG99_PEER_ETCD_PID=$SPG99_PEER_ETCD_PID"
  log "dry: SPG99_PEER_VERSIONS='$SPG99_PEER_VERSIONS'"
  log "dry run OK"
}

# --- benchmarks and report -------------------------------------------------------------------

# run_bench NAME OUTFILE: cargo bench --bench NAME in its own process group, stdout shown and
# saved to OUTFILE. Runs in the background and is waited for, so that a signal to this script
# is handled at once (the trap ends the group) rather than after the benchmark.
run_bench() {
  local name="$1" out="$2" rc=0
  log "running: cargo bench --bench $name"
  # shellcheck disable=SC2016 # $1 and $2 are the inner bash's arguments
  setsid bash -c 'set -o pipefail; cargo bench --bench "$1" </dev/null | tee "$2"' _ "$name" "$out" &
  BENCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  [ "$rc" -eq 0 ] || die "cargo bench --bench $name failed (exit $rc)"
}

fstype() { # fstype PATH: the type of the filesystem holding PATH (its nearest existing parent)
  local p="$1"
  while [ ! -e "$p" ]; do p="$(dirname "$p")"; done
  df --output=fstype "$p" | tail -n 1
}

machine_header() {
  local cpu mem cmd
  cpu="$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)"
  [ -n "$cpu" ] || cpu="$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)"
  mem="$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  cmd="benches/peers.sh"
  [ -z "${SPG99_BENCH_SECS:-}" ] || cmd="SPG99_BENCH_SECS=$SPG99_BENCH_SECS $cmd"
  cat <<EOF
# SPG99 against its peers

- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- Kernel: $(uname -srm)
- CPU: ${cpu:-unknown}, $(nproc) cores
- Memory: $mem
- Versions: $SPG99_PEER_VERSIONS
- Durability: PostgreSQL synchronous_commit=on, fsync=on, full_page_writes=on; etcd defaults (WAL fsync per commit)
- Disks: peers' data on $(fstype "$WORK") ($WORK), SPG99's on $(fstype "$TARGET") ($TARGET)
- Command: \`$cmd\`
EOF
}

run_benchmarks() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found (install the Rust toolchain)"
  cd "$ROOT"
  local out="$TARGET/bench" b
  mkdir -p "$out"
  for b in peers sse_fanout rebuild; do
    run_bench "$b" "$WORK/$b.out"
  done
  {
    machine_header
    for b in peers sse_fanout rebuild; do
      # shellcheck disable=SC2016 # literal backquotes (markdown)
      printf '\n## `cargo bench --bench %s`\n\n' "$b"
      cat "$WORK/$b.out"
    done
  } >"$out/peers.md"
  log "report written"
  echo "$out/peers.md"
}

# --- main ------------------------------------------------------------------------------------

main() {
  trap cleanup EXIT
  trap 'on_signal INT' INT
  trap 'on_signal TERM' TERM
  trap 'on_signal HUP' HUP

  [ "$(id -u)" -eq 0 ] || die "run as root: it installs packages and runs PostgreSQL as the postgres user"
  install_missing
  PG_BIN="$(find_pg_bin)"
  ETCD_BIN="$(find_etcd_bin)"
  TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
  case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac

  cd / # the postgres user may not be allowed into the caller's directory (e.g. under /root)
  WORK="$(mktemp -d -t spg99-peers.XXXXXX)"
  chmod 711 "$WORK" # the postgres user must reach its dirs inside
  log "temp dir $WORK"
  if [ "$(fstype "$WORK")" = tmpfs ] && [ "$(fstype "$TARGET")" != tmpfs ]; then
    log "WARNING: $WORK is on tmpfs, where fsync costs nothing: the peers would look faster" \
      "than SPG99 on disk. Set TMPDIR to a directory on the same disk as $TARGET."
  fi

  read -r PG_PORT ETCD_PORT ETCD_PEER_PORT <<<"$(free_ports 3)"
  [ -n "$ETCD_PEER_PORT" ] || die "could not pick free ports"
  start_postgres "$PG_PORT"
  start_etcd "$ETCD_PORT" "$ETCD_PEER_PORT"

  export SPG99_PEER_PG="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
  export SPG99_PEER_PG_PID="$PG_PID"
  export SPG99_PEER_ETCD="$ETCD_URL"
  export SPG99_PEER_ETCD_PID="$ETCD_PID"
  SPG99_PEER_VERSIONS="$(versions_line)"
  export SPG99_PEER_VERSIONS
  log "versions: $SPG99_PEER_VERSIONS"

  if [ -n "$DRY" ]; then
    dry_check
  else
    run_benchmarks
  fi
}

main "$@"
