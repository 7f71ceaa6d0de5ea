"""Confirmation (schedules/confirm.py): at the end of a tuning run the default schedule and the
fastest searched candidates are measured again, interleaved, and the winner is what a build with
the database applies; a lucky measurement does not make a kernel the database's pick."""

import pytest

from helpers import seed_of, tune_tiny
from graphs import assert_matches_onnxruntime
from mobilec.compiler import resolve
from mobilec.schedules.confirm import CONTENDERS, ROUNDS
from mobilec.schedules.database import CONFIRMED, copy_record, for_target, open_database, valid_records
from mobilec.schedules.defaults import decisions
from mobilec.schedules.tuning import REPEAT
from graphs import tiny
from helpers import host_db

pytestmark = [pytest.mark.tuning]

LUCKY = 1e-9  # seconds: no kernel runs this fast; a record with it is a lucky (or broken) measurement


def test_a_lucky_record_is_measured_again_before_a_build_applies_it(tmp_path):
    first = tune_tiny(tmp_path / "db", 4)
    sub = tmp_path / "db" / host_db()
    for c in first.confirmed:  # the tasks whose search beat the default (else the default holds unmeasured)
        assert 2 <= c.contenders <= CONTENDERS + 1 and c.default_ms and c.winner_ms > 0
        assert c.searched_won or c.winner_ms == c.default_ms

    # a searched record with an impossible time, as a lucky draw (or a broken measurement) leaves
    db = open_database(sub)
    target = resolve("host").tvm_target()
    lucky = {}
    for rec in db.get_all_tuning_records():
        mod = rec.workload.mod
        if str(mod) not in lucky and decisions(rec.trace) != seed_of(rec):
            lucky[str(mod)] = decisions(rec.trace)
            copy_record(db, rec, [LUCKY])
    del db
    assert lucky
    # the search alone would pick it (its records: fastest first)
    db = open_database(sub)
    assert all(float(valid_records(db, r.workload.mod)[0].run_secs[0]) == LUCKY
               for r in db.get_all_tuning_records() if str(r.workload.mod) in lucky)

    tune_tiny(tmp_path / "db", 8)  # resumed: searches more, then confirms again, the lucky record included
    confirmed = open_database(sub / CONFIRMED)
    winners = confirmed.get_all_tuning_records()
    assert len(winners) == len({str(r.workload.mod) for r in winners})  # one per workload, earlier runs' replaced
    assert {str(r.workload.mod) for r in winners} >= set(lucky)  # every lucky record contested, measured again
    applied = for_target(sub, target)
    for rec in winners:
        assert len(rec.run_secs) == ROUNDS * REPEAT and min(float(s) for s in rec.run_secs) > 1e-7
        best = applied.query_tuning_record(rec.workload.mod, target, "main")
        assert decisions(best.trace) == decisions(rec.trace)  # what a build applies: the confirmed winner
        assert float(best.run_secs[0]) != LUCKY
    assert_matches_onnxruntime(tiny(), tmp_path, tuning_db=str(tmp_path / "db"), force_tuning_db=True)
