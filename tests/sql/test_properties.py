"""Property-based bad input: random, NULL, oversized and oddly typed arguments to every function.

Each call either succeeds or raises an RT error (never a raw constraint
violation, overflow or internal error), and afterwards the tables' invariants
still hold. The second half makes the same calls as ratchet_worker and
ratchet_client from hostile sessions (every ratchet.* setting and the
search_path set against Ratchet) and checks nobody bent time or stole a lease.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlhelp import claim, start

Conn = psycopg.Connection[Any]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
        max_size=20,
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet="abc\u00e9", max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
texts = st.one_of(
    st.none(),
    st.just(""),
    st.just("   "),
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
        max_size=30,
    ),
    st.text(alphabet="ab", min_size=190, max_size=260),
    st.sampled_from(
        ["default", "victim", "wf", "message", "child", "* * * * *", "0 3 * * MON-FRI"]
    ),
)
ints = st.one_of(
    st.none(), st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, -1, 1000, 1001])
)
intervals = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "0 seconds",
            "-1 second",
            "1 second",
            "30 seconds",
            "1 day",
            "2 days",
            "1000000 years",
            "-1000000 years",
            "1 microsecond",
            "infinity",
        ]
    ),
)
timestamps = st.one_of(
    st.none(),
    st.sampled_from(
        ["now", "infinity", "-infinity", "1970-01-01Z", "2030-01-01Z", "294276-12-31Z"]
    ),
)
floats = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.5, -1.0, 1e300]),
)
jsons = st.one_of(st.none(), json_values)


def interval_param(v: str | None) -> str | None:
    return None if v == "infinity" else v


# function template, argument strategies; {wid}/{run} mean the live victim's id and run
CALLS: list[tuple[str, list[Any]]] = [
    (
        "select ratchet.start_workflow(%s, %s::jsonb, %s, %s, %s::int, %s, %s::timestamptz, %s::interval, %s::int, %s)",
        [texts, jsons, texts, texts, ints, texts, timestamps, intervals, ints, texts],
    ),
    (
        "select ratchet.start_workflows(%s, %s::jsonb[], %s, %s::text[])",
        [
            texts,
            st.one_of(st.none(), st.lists(jsons, max_size=3)),
            texts,
            st.one_of(st.none(), st.lists(texts, max_size=3)),
        ],
    ),
    ("select ratchet.get_workflow(%s)", [texts]),
    (
        "select ratchet.claim(%s::text[], %s, %s::int, %s::interval)",
        [st.one_of(st.none(), st.lists(texts, max_size=3)), texts, ints, intervals],
    ),
    ("select ratchet.claim_workflow(%s, %s, %s::interval)", [texts, texts, intervals]),
    ("select ratchet.heartbeat(%s, %s::interval)", [texts, intervals]),
    (
        "select ratchet.record_step({wid}, {run}, %s::int, %s, %s::jsonb, %s::jsonb)",
        [ints, texts, jsons, jsons],
    ),
    ("select ratchet.record_step(%s, %s::bigint, %s::int, %s)", [texts, ints, ints, texts]),
    ("select ratchet.finish(%s, %s::bigint, %s::jsonb)", [texts, ints, jsons]),
    ("select ratchet.fail({wid}, {run}, %s::jsonb, %s::interval)", [jsons, intervals]),
    ("select ratchet.suspend({wid}, {run}, %s::timestamptz, %s, %s)", [timestamps, texts, texts]),
    ("select ratchet.durable_sleep({wid}, {run}, %s::int, %s::float8)", [ints, floats]),
    ("select ratchet.send(%s, %s::jsonb, %s, %s)", [texts, jsons, texts, texts]),
    ("select ratchet.recv({wid}, {run}, %s::int, %s)", [ints, texts]),
    ("select ratchet.set_event({wid}, {run}, %s::int, %s, %s::jsonb)", [ints, texts, jsons]),
    ("select ratchet.get_event(%s, %s)", [texts, texts]),
    ("select ratchet.cancel(%s)", [texts]),
    ("select ratchet.resume(%s)", [texts]),
    ("select ratchet.fork(%s, %s::int, %s)", [texts, ints, texts]),
    (
        "select ratchet.create_queue(%s, %s::int, %s::int, %s::int, %s::interval)",
        [texts, ints, ints, ints, intervals],
    ),
    ("select ratchet.pause_queue(%s)", [texts]),
    (
        "select ratchet.schedule(%s, %s, %s, %s::jsonb, %s, %s)",
        [texts, texts, texts, jsons, texts, texts],
    ),
    ("select ratchet.cron_next(%s, %s::timestamptz, %s)", [texts, timestamps, texts]),
    ("select ratchet.purge(%s::interval, %s::int)", [intervals, ints]),
    (
        "select ratchet.wait_result(%s, %s::interval)",
        [texts, st.sampled_from([None, "0", "-1 second"])],
    ),
]

INVARIANTS = """
select
  (select count(*) from ratchet.workflows
    where (status = 'running') <> (run_id is not null and lease_expires_at is not null and worker_id is not null))
    as bad_run_state,
  (select count(*) from ratchet.workflows
    where (status in ('succeeded', 'failed', 'cancelled', 'dead')) <> (ended_at is not null)) as bad_end_state,
  (select count(*) from ratchet.workflows where attempts > max_attempts or attempts < 0) as bad_attempts,
  (select count(*) from ratchet.steps s
    where not exists (select 1 from ratchet.workflows w where w.workflow_id = s.workflow_id)) as orphan_steps,
  (select count(*) from ratchet.workflows where priority < 0) as bad_priority
"""


def as_param(value: Any) -> Any:
    if isinstance(value, (dict, list, bool, int, float)) or value is None:
        if isinstance(value, (dict, list)) or (value is not None and not isinstance(value, str)):
            return psycopg.types.json.Jsonb(value)
    return value


@pytest.mark.parametrize("template,strategies", CALLS, ids=[c[0].split("(")[0][15:] for c in CALLS])
def test_random_arguments_give_success_or_rt_error(
    conn: Conn, template: str, strategies: list[Any]
) -> None:
    wid = start(conn, "wf", workflow_id="victim")
    [c] = claim(conn)
    query = template.replace("{wid}", f"'{wid}'").replace("{run}", str(c["run_id"]))
    kinds = [part.split(")")[0] for part in query.split("%s")[1:]]

    def adapt(kind: str, value: Any) -> Any:
        if kind.startswith("::jsonb[]"):
            return None if value is None else [psycopg.types.json.Jsonb(v) for v in value]
        if kind.startswith("::jsonb"):
            return None if value is None else psycopg.types.json.Jsonb(value)
        if kind.startswith("::interval"):
            return interval_param(value)
        return value

    @settings(
        max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(st.tuples(*strategies))
    def check(args: tuple[Any, ...]) -> None:
        params = [adapt(k, v) for k, v in zip(kinds, args, strict=True)]
        try:
            conn.execute(query, params)
        except psycopg.Error as exc:
            assert exc.sqlstate and exc.sqlstate.startswith("RT"), (
                f"{query} with {params!r} raised {exc.sqlstate}: {exc}"
            )
            assert exc.diag.message_hint, f"RT error without hint: {exc}"
        row = conn.execute(INVARIANTS).fetchone()
        assert row is not None and set(row.values()) == {0}, row

    check()


# -- hostile sessions (issue 14) ------------------------------------------------
#
# The same calls, made as ratchet_worker and as ratchet_client, in a session
# that sets every ratchet.* setting to hostile values and a search_path that
# shadows pg_catalog's functions and operators, in a database whose fake clock
# is off (as in production). Every call succeeds, is refused with an RT error,
# or (for a function the role is not granted) with permission denied; then
# the invariants hold and nobody bent time or stole the victim's lease.

HOSTILE_GUCS: dict[str, Any] = {
    "ratchet.fake_now": st.sampled_from(
        ["", "infinity", "-infinity", "garbage", "99999-01-01", "2999-01-01Z", "1900-01-01Z",
         "now", "epoch", "2030-01-01 00:00Z", "'; drop table ratchet.workflows; --"]),
    "ratchet.notify": st.sampled_from(["", "off", "on", "garbage", "1e400"]),
    "ratchet.cron_zones": st.sampled_from(["", "|est5edt4|", "|no/such_zone|", "x" * 9000]),
    "ratchet.anything": st.sampled_from(["", "-1", "infinity", "9" * 400]),
}
HOSTILE_PATHS = st.sampled_from(
    ["evil, pg_catalog", "evil, pg_temp, pg_catalog", "pg_temp, evil, public", "evil"])

EVIL_SCHEMA = """
create schema evil;
grant usage on schema evil to public;
create function evil.now() returns timestamptz language sql as $$ select 'infinity'::timestamptz $$;
create function evil.clock_timestamp() returns timestamptz language sql
  as $$ select 'infinity'::timestamptz $$;
create function evil.length(text) returns int language sql as $$ select 0 $$;
create function evil.octet_length(text) returns int language sql as $$ select 0 $$;
create function evil.lt(timestamptz, timestamptz) returns boolean language sql as $$ select true $$;
create operator evil.< (leftarg = timestamptz, rightarg = timestamptz, function = evil.lt);
create table evil.workflows (workflow_id text);
grant execute on all functions in schema evil to public;
"""

VICTIM_INTACT = """
select (status <> 'running' or run_id = %(run)s) as not_stolen,
       coalesce(lease_expires_at <= clock_timestamp() + interval '1 day 1 minute', true) as lease_bounded
  from ratchet.workflows where workflow_id = 'victim'
"""

TIME_BOUNDS = """
select count(*) filter (where not isfinite(start_at) and wait_for is null) as infinite_start,
       count(*) filter (where created_at > clock_timestamp() + interval '1 minute'
                           or created_at < clock_timestamp() - interval '1 hour') as bent_created,
       count(*) filter (where lease_expires_at > clock_timestamp() + interval '1 day 1 minute'
                           or not isfinite(lease_expires_at)) as unbounded_lease
  from ratchet.workflows
"""


@pytest.mark.parametrize("role", ["ratchet_worker", "ratchet_client"])
@pytest.mark.parametrize("template,strategies", CALLS, ids=[c[0].split("(")[0][15:] for c in CALLS])
def test_hostile_sessions_of_each_role(
    conn: Conn, connect: Any, template: str, strategies: list[Any], role: str
) -> None:
    conn.execute("update ratchet.settings set fake_clock_enabled = false")
    conn.execute(EVIL_SCHEMA)
    wid = start(conn, "wf", workflow_id="victim")
    [c] = claim(conn)
    query = template.replace("{wid}", f"'{wid}'").replace("{run}", str(c["run_id"]))
    kinds = [part.split(")")[0] for part in query.split("%s")[1:]]
    fn = query.split("(")[0].split()[-1]
    granted = conn.execute(
        "select bool_or(has_function_privilege(%s, p.oid, 'execute')) as ok from pg_proc p"
        " join pg_namespace n on n.oid = p.pronamespace"
        " where n.nspname = 'ratchet' and p.proname = %s",
        [role, fn.split(".")[1]]).fetchone()
    assert granted is not None
    hostile = connect()
    hostile.execute(f"set role {role}")

    def adapt(kind: str, value: Any) -> Any:
        if kind.startswith("::jsonb[]"):
            return None if value is None else [psycopg.types.json.Jsonb(v) for v in value]
        if kind.startswith("::jsonb"):
            return None if value is None else psycopg.types.json.Jsonb(value)
        if kind.startswith("::interval"):
            return interval_param(value)
        return value

    @settings(
        max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(st.tuples(*strategies), st.fixed_dictionaries(HOSTILE_GUCS), HOSTILE_PATHS)
    def check(args: tuple[Any, ...], gucs: dict[str, str], path: str) -> None:
        # settings first (under the real search_path), then the hostile path
        hostile.execute("reset search_path")
        for name, value in gucs.items():
            hostile.execute("select set_config(%s, %s, false)", [name, value])
        hostile.execute("select set_config('search_path', %s, false)", [path])
        params = [adapt(k, v) for k, v in zip(kinds, args, strict=True)]
        try:
            # the statement itself names pg_catalog casts only; the functions
            # must not care about the session's path
            hostile.execute(query, params)
        except psycopg.Error as exc:
            if exc.sqlstate == "42501":
                assert not granted["ok"], f"{role} is granted {fn} but got: {exc}"
            else:
                assert exc.sqlstate and exc.sqlstate.startswith("RT"), (
                    f"{query} as {role} with {params!r}, {gucs!r}, search_path {path}"
                    f" raised {exc.sqlstate}: {exc}"
                )
                assert exc.diag.message_hint, f"RT error without hint: {exc}"
        if gucs["ratchet.fake_now"]:  # the clock cannot be bent in this database
            with pytest.raises(psycopg.Error) as info:
                hostile.execute("select ratchet.now()")
            assert info.value.sqlstate == "RT007", info.value
        row = conn.execute(INVARIANTS).fetchone()
        assert row is not None and set(row.values()) == {0}, row
        row = conn.execute(TIME_BOUNDS).fetchone()
        assert row is not None and set(row.values()) == {0}, row
        victim = conn.execute(VICTIM_INTACT, {"run": c["run_id"]}).fetchone()
        assert victim is None or (victim["not_stolen"] and victim["lease_bounded"]), victim

    check()
