#!/usr/bin/env bash
# Make Debian's PostgreSQL server binaries (initdb, pg_ctl) available for the
# shared-study test (tests/pg.py starts a throwaway server on 127.0.0.1 from them).
# Idempotent: does nothing when they are already under /usr/lib/postgresql/*/bin.
# Not root and not installed: says so and exits 0; the tests that need it skip.
set -euo pipefail

for bin in /usr/lib/postgresql/*/bin; do
  if [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ]; then
    exit 0
  fi
done

if [ "$(id -u)" -ne 0 ]; then
  echo "tests/install_postgres.sh: PostgreSQL is not installed and this is not root; run it as root (apt-get install postgresql) or the shared-study test skips" >&2
  exit 0
fi

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
