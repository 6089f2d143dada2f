"""Property-based bad input: random, NULL, oversized and oddly typed arguments to every function.

Each call either succeeds or raises an RT error (never a raw constraint
violation, overflow or internal error), and afterwards the tables' invariants
still hold.
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
