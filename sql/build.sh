#!/bin/sh
# Build Ratchet's SQL scripts from the numbered sources in sql/.
#
#   sh sql/build.sh all OUTDIR
#       Everything the package and `make install` ship, for the version in
#       ratchet.control, into OUTDIR (stale *.sql files there are removed):
#         ratchet--V.sql                 CREATE EXTENSION script
#         ratchet.sql                    plain-SQL install (psql -f, one transaction)
#         ratchet--F--V.sql              ALTER EXTENSION ratchet UPDATE script,
#                                        one per sql/upgrades/ratchet--F--V.sql
#         ratchet-plain--F--V.sql        the same upgrade for plain-SQL installs
#   sh sql/build.sh extension|plain VERSION OUTPUT SOURCES...
#   sh sql/build.sh upgrade|plain-upgrade VERSION OUTPUT PREAMBLE SOURCES...
#       One script. PREAMBLE is sql/upgrades/ratchet--FROM--VERSION.sql.
#
# "extension" refuses to run under psql and marks the user tables for pg_dump;
# "plain" is one transaction to apply with `psql -f` where extensions cannot
# be installed. Lines tagged "-- @extension-only" (pg_extension_config_dump)
# are left out of the plain scripts.
#
# An upgrade script is: a version guard (RT008 unless ratchet.version() is
# FROM, so it never runs twice or from an unknown version), the hand-written
# preamble (table changes, backfills, drops of changed functions and views),
# then every source except 10_tables.sql with `create function|view|procedure`
# turned into `create or replace` and `create table|index|sequence` into
# `create ... if not exists`. `create type` outside 10_tables.sql cannot be
# rerun, so the build refuses it. tests/sql/test_upgrade.py compares an
# upgraded catalog with a fresh install's.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

# Print the source files, in order, with @VERSION@ filled in; drop tagged
# lines for plain scripts; rewrite creates for upgrades.
emit_sources() { # kind version files...
  k=$1; v=$2; shift 2
  for f in "$@"; do
    case "$k" in
      upgrade|plain-upgrade)
        [ "$(basename "$f")" = 10_tables.sql ] && continue
        if grep -n -i -E '^[[:space:]]*create[[:space:]]+type[[:space:]]' "$f" >&2; then
          echo "build.sh: $f: create type outside sql/10_tables.sql cannot be rerun by an" \
               "upgrade; move it to 10_tables.sql and create it in the upgrade preamble" >&2
          exit 1
        fi ;;
    esac
    echo
    echo "-- ==== $(basename "$f") ===="
    case "$k" in
      extension) sed -e "s/@VERSION@/$v/g" "$f" ;;
      plain) sed -e "s/@VERSION@/$v/g" -e '/-- @extension-only$/d' "$f" ;;
      upgrade|plain-upgrade)
        if [ "$k" = upgrade ]; then drop='/-- @nothing$/d'; else drop='/-- @extension-only$/d'; fi
        sed -E -e "s/@VERSION@/$v/g" -e "$drop" \
          -e 's/^([Cc][Rr][Ee][Aa][Tt][Ee])[[:space:]]+([Ff][Uu][Nn][Cc][Tt][Ii][Oo][Nn]|[Vv][Ii][Ee][Ww]|[Pp][Rr][Oo][Cc][Ee][Dd][Uu][Rr][Ee])[[:space:]]/\1 or replace \2 /' \
          -e '/^[Cc][Rr][Ee][Aa][Tt][Ee][[:space:]]+([Uu][Nn][Ii][Qq][Uu][Ee][[:space:]]+)?([Tt][Aa][Bb][Ll][Ee]|[Ii][Nn][Dd][Ee][Xx]|[Ss][Ee][Qq][Uu][Ee][Nn][Cc][Ee])[[:space:]]+[Ii][Ff][[:space:]]/b' \
          -e 's/^([Cc][Rr][Ee][Aa][Tt][Ee][[:space:]]+([Uu][Nn][Ii][Qq][Uu][Ee][[:space:]]+)?([Tt][Aa][Bb][Ll][Ee]|[Ii][Nn][Dd][Ee][Xx]|[Ss][Ee][Qq][Uu][Ee][Nn][Cc][Ee]))[[:space:]]/\1 if not exists /' \
          "$f" ;;
    esac
  done
}

# The guard at the top of an upgrade: the whole script is one transaction
# (ALTER EXTENSION, or BEGIN/COMMIT for plain), so raising here changes nothing.
emit_guard() { # from to kind
  cat <<EOF
do \$guard\$
declare
  v text;
begin
  if pg_catalog.to_regprocedure('ratchet.version()') is null then
    raise exception using errcode = 'RT008',
      message = 'ratchet is not installed in this database: no ratchet.version()',
      hint = 'install it (ratchet.sql, CREATE EXTENSION ratchet or \`ratchet install\`) instead of upgrading';
  end if;
EOF
  if [ "$3" = plain-upgrade ]; then
    cat <<EOF
  if exists (select 1 from pg_catalog.pg_extension where extname = 'ratchet') then
    raise exception using errcode = 'RT008',
      message = 'ratchet is installed as an extension here; this is the plain-SQL upgrade',
      hint = 'run ALTER EXTENSION ratchet UPDATE TO ''$2'' (or \`ratchet install\`)';
  end if;
EOF
  fi
  cat <<EOF
  execute 'select ratchet.version()' into v;
  if v = '$2' then
    raise exception using errcode = 'RT008',
      message = 'ratchet is already at version $2; this script upgrades $1 to $2',
      hint = 'nothing to do: the upgrade has already been applied';
  elsif v is distinct from '$1' then
    raise exception using errcode = 'RT008',
      message = pg_catalog.format('ratchet %s is installed; this script upgrades $1 to $2', v),
      hint = 'apply the upgrade scripts from ' || coalesce(v, '?') || ' in order, or run \`ratchet install\` from the package of that version range';
  end if;
end
\$guard\$;
EOF
}

build_one() { # kind version out [preamble] sources...
  kind=$1; version=$2; out=$3; shift 3
  mkdir -p "$(dirname "$out")"
  tmp="$out.tmp"
  {
    echo "-- Generated by sql/build.sh from sql/*.sql: do not edit by hand."
    case "$kind" in
      extension|plain)
        echo "-- ratchet $version ($kind install script)"
        if [ "$kind" = extension ]; then
          printf '%s\n' '\echo Use "CREATE EXTENSION ratchet" to load this file. \quit'
        else
          echo 'BEGIN;'
        fi
        cat <<'EOF'
do $guard$
begin
  if exists (select 1 from pg_catalog.pg_namespace where nspname = 'ratchet') then
    raise exception using errcode = 'RT008',
      message = 'a schema named ratchet already exists in this database',
      hint = case when pg_catalog.to_regprocedure('ratchet.version()') is not null
                  then 'ratchet is already installed; to upgrade it run `ratchet install` or the plain upgrade script'
                  when not exists (select 1 from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace where n.nspname = 'ratchet')
                   and not exists (select 1 from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace where n.nspname = 'ratchet')
                  then 'it is empty (DROP EXTENSION of a database first installed at 0.1.0 leaves it): DROP SCHEMA ratchet, then install again'
                  else 'it was not created by Ratchet: rename or drop it, or install Ratchet into another database' end;
  end if;
end
$guard$;
EOF
        # The script creates the schema (ratchet.control says schema =
        # pg_catalog), so it is a member of the extension and DROP EXTENSION
        # drops it: nothing is left behind.
        echo 'CREATE SCHEMA ratchet;'
        emit_sources "$kind" "$version" "$@" ;;
      upgrade|plain-upgrade)
        preamble=$1; shift
        from=$(basename "$preamble" .sql | sed -n 's/^ratchet--\(.*\)--\(.*\)$/\1/p')
        to=$(basename "$preamble" .sql | sed -n 's/^ratchet--\(.*\)--\(.*\)$/\2/p')
        if [ -z "$from" ] || [ "$to" != "$version" ]; then
          echo "build.sh: $preamble is not named ratchet--FROM--$version.sql" >&2
          exit 1
        fi
        echo "-- ratchet $from -> $version ($kind script)"
        if [ "$kind" = upgrade ]; then
          printf '%s\n' "\\echo Use \"ALTER EXTENSION ratchet UPDATE TO '$version'\" to load this file. \\quit"
        else
          echo 'BEGIN;'
        fi
        emit_guard "$from" "$version" "$kind"
        echo
        echo "-- ==== $(basename "$preamble") (preamble) ===="
        if [ "$kind" = upgrade ]; then cat "$preamble"; else sed -e '/-- @extension-only$/d' "$preamble"; fi
        emit_sources "$kind" "$version" "$@" ;;
      *) echo "build.sh: unknown kind $kind" >&2; exit 2 ;;
    esac
    case "$kind" in plain|plain-upgrade) echo 'COMMIT;' ;; esac
  } > "$tmp"
  # leave an unchanged file alone (make and editors see no change)
  if [ -f "$out" ] && cmp -s "$tmp" "$out"; then rm -f "$tmp"; else mv "$tmp" "$out"; fi
}

kind=${1:?usage: sh sql/build.sh all OUTDIR | KIND VERSION OUTPUT [PREAMBLE] SOURCES...}
if [ "$kind" = all ]; then
  outdir=${2:?usage: sh sql/build.sh all OUTDIR}
  version=$(sed -n "s/^default_version[[:space:]]*=[[:space:]]*'\(.*\)'.*/\1/p" "$here/../ratchet.control")
  [ -n "$version" ] || { echo "build.sh: no default_version in ratchet.control" >&2; exit 1; }
  sources=$(LC_ALL=C ls "$here"/[0-9]*.sql)
  # shellcheck disable=SC2086  # the source names have no spaces
  set -- $sources
  mkdir -p "$outdir"
  built="ratchet--$version.sql ratchet.sql"
  build_one extension "$version" "$outdir/ratchet--$version.sql" "$@"
  build_one plain "$version" "$outdir/ratchet.sql" "$@"
  for pre in "$here"/upgrades/ratchet--*--"$version".sql; do
    [ -f "$pre" ] || continue
    from=$(basename "$pre" .sql | sed -n 's/^ratchet--\(.*\)--.*$/\1/p')
    build_one upgrade "$version" "$outdir/ratchet--$from--$version.sql" "$pre" "$@"
    build_one plain-upgrade "$version" "$outdir/ratchet-plain--$from--$version.sql" "$pre" "$@"
    built="$built ratchet--$from--$version.sql ratchet-plain--$from--$version.sql"
  done
  for f in "$outdir"/ratchet*.sql; do
    [ -f "$f" ] || continue
    case " $built " in *" $(basename "$f") "*) ;; *) rm -f "$f" ;; esac
  done
  exit 0
fi
build_one "$@"
