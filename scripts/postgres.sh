#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests, from Debian's `postgresql` package (installed when
# missing). `start DIR PORT` creates a cluster in DIR listening on 127.0.0.1:PORT with a
# database `faultline` and prints its URL; `stop DIR` stops it. The server refuses to run as
# root, so as root it runs as the package's `postgres` user.
set -euo pipefail

cmd=${1:?usage: postgres.sh start DIR PORT | stop DIR}
dir=${2:?usage: postgres.sh start DIR PORT | stop DIR}

bindir() {
  local pg_config
  if pg_config=$(command -v pg_config 2>/dev/null) && [ -x "$("$pg_config" --bindir)/initdb" ]; then
    "$pg_config" --bindir
    return
  fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$found" ]; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    found=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  echo "$found"
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

bin=$(bindir)
case "$cmd" in
  start)
    port=${3:?usage: postgres.sh start DIR PORT}
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U faultline --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off" start >/dev/null
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U faultline faultline
    echo "postgres://faultline@127.0.0.1:$port/faultline"
    ;;
  stop)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
  *)
    echo "usage: postgres.sh start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
