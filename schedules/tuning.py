"""MetaSchedule tuning of a lowered mobilec module: task selection, budget, builder and runner,
resumable database, live progress.

The budget (``trials``) counts search trials with a valid measurement, earlier runs included: the
default schedules measured to seed the search and the candidates that failed are stored in the
database too, but spend nothing, so a run interrupted while seeding, or one whose candidates all
failed, is continued by the next run rather than reported as complete."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from mobilec import stops
from mobilec.errors import UserError
from mobilec.schedules.confirm import confirm, seedings
from mobilec.schedules.database import open_database, records_for, searched, seed_record, valid_records
from mobilec.schedules.names import kernel_name, unique
from mobilec.schedules.progress import Progress, ProgressCallback, TaskStats, mean_ms
from mobilec.targets import cpu_params

CONV_MARK = "conv2d"  # depthwise, pointwise and regular convolutions, with their fused epilogues
REPEAT = 10  # timed calls per candidate, each with cold caches; MetaSchedule ranks by their mean


DEFAULT_TRIALS = 64  # the budget when neither trials nor minutes are given
UNBOUNDED = 1 << 30  # trials, when the time budget alone bounds the search
PATIENCE_ROUNDS = 3  # a task stops once this many of its rounds in a row left its best unchanged
IMPROVED = 0.01      # ... by more than this fraction


@dataclass
class TuneOptions:
    trials: Optional[int] = None     # global budget for the tasks, counting earlier runs (None: DEFAULT_TRIALS,
    #                                  or, with ``minutes``, as many as the time allows)
    minutes: Optional[float] = None  # time budget for this run's search: no round starts after it
    per_round: int = 16              # candidates measured per round
    all_tasks: bool = True           # every kernel; False: convolution kernels only
    tracker: Optional[str] = None    # HOST:PORT; None with local=True measures on this machine
    key: Optional[str] = None
    session_timeout: int = 120
    seed: int = 0
    live: bool = True                # show progress on ``console``: a live table, or plain lines off a terminal
    build_limit: float = 60.0        # seconds one candidate's build may take (most take 0.5-3 s); a slower
    #                                  one is a failed candidate and the search goes on


@dataclass
class TuneResult:
    database: Path
    progress: Progress
    measured: int                    # search candidates measured in this run (failed ones included)
    skipped: list[str] = field(default_factory=list)  # tasks whose budget was already spent (readable names)
    plot: Optional[Path] = None
    seconds: float = 0.0
    seeded: int = 0                  # default schedules measured and stored before the search
    devices: int = 1                 # devices measuring at once (every server under the key)
    verdict: Optional[object] = None  # the whole model with and without the database (compiler.verdict.Verdict)
    confirmed: list = field(default_factory=list)  # per task re-measured at the end (confirm.Confirmed)
    rechecked: list = field(default_factory=list)  # per searched winner timed inside the model (in_network.Rechecked)


def create_session(rpc_config):
    """MetaSchedule's session factory, through mobilec's tracker client: a device that is gone or
    busy for too long is an error on that candidate, not a wait forever."""
    from mobilec.rpc.client import request

    return request(f"{rpc_config.tracker_host}:{rpc_config.tracker_port}", rpc_config.tracker_key,
                   timeout=60, session_timeout=rpc_config.session_timeout_sec)


class DeviceLost(UserError, RuntimeError):
    """The device stopped answering mid-run; the database holds every finished round."""


class TuningError(UserError, ValueError):
    """Nothing to tune as asked (no tasks, bad options)."""


class TuningFailed(UserError, RuntimeError):
    """Every candidate failed to build or run: nothing was learnt about this device."""


def _threads_as_the_runtime() -> None:
    """In the local runner's worker: the thread pool a model loaded with ``mobilec.runtime.load``'s
    defaults gets (one thread per core here), not TVM's default (half the cores on x86), so
    candidates are ranked at the parallelism they will run at."""
    import tvm

    from mobilec.runtime import threads

    threads.configure(tvm, *threads.plan())


def _measure_alone(runner):
    """``runner`` whose measurements are finished when ``run`` returns. MetaSchedule's task
    scheduler joins a task's measurements only when it next picks the task, and meanwhile builds
    the next tasks' candidates: on a host that also builds, every measurement would share the cores
    with the compiler. A device over RPC measures apart from the host, so only the local runner
    is wrapped."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture

    @derived_object
    class Measured(PyRunnerFuture):
        def __init__(self, result):
            super().__init__()
            self.measured = result

        def done(self) -> bool:
            return True

        def result(self):
            return self.measured

    @derived_object
    class MeasureAlone(PyRunner):
        def run(self, runner_inputs):
            return [Measured(f.result()) for f in runner.run(runner_inputs)]

    return MeasureAlone()


def _runner(opts: TuneOptions, workers: int = 1):
    from tvm.s_tir import meta_schedule as ms

    # caches flushed before each measurement: in a network a kernel finds its weights cold, and
    # candidates ranked with warm caches measured faster alone but slower in the whole model
    evaluator = ms.runner.EvaluatorConfig(number=1, repeat=REPEAT, min_repeat_ms=0, enable_cpu_cache_flush=True)
    if opts.tracker:
        from mobilec.rpc.client import parse_addr

        host, port = parse_addr(opts.tracker)
        return ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=opts.key,
                                           session_priority=1, session_timeout_sec=opts.session_timeout),
            evaluator_config=evaluator, max_workers=workers, f_create_session=create_session)
    return _measure_alone(ms.runner.LocalRunner(evaluator_config=evaluator, initializer=_threads_as_the_runtime))


def farm_size(opts: TuneOptions) -> int:
    """How many devices measure at once: every server registered under the key when the run
    starts (the tracker hands each runner worker a session on a free one), at least one."""
    from mobilec.rpc.client import RPCError, devices

    try:
        known = devices(opts.tracker).get(opts.key, {})
    except RPCError:
        return 1  # the first measurement reports the tracker
    return max(1, len(known.get("servers", [])), known.get("free", 0))


def select_tasks(extracted, all_tasks: bool):
    return [t for t in extracted if all_tasks or CONV_MARK in t.task_name]


def trial_budget(opts: TuneOptions) -> int:
    """The run's trial budget: as given; else, with a time budget, as many as it allows."""
    if opts.trials is not None:
        return opts.trials
    return UNBOUNDED if opts.minutes is not None else DEFAULT_TRIALS


def until_converged(strategy, stats: TaskStats):
    """``strategy`` (a MetaSchedule search strategy) that proposes nothing more once ``stats`` says its
    task has converged: MetaSchedule then ends the task itself, and spends the budget on the others."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    @derived_object
    class UntilConverged(PySearchStrategy):
        def __init__(self, inner, stats):
            super().__init__()
            self.inner, self.stats = inner, stats

        def _initialize_with_tune_context(self, context) -> None:
            self.inner._initialize_with_tune_context(context)

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None):
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

        def post_tuning(self) -> None:
            self.inner.post_tuning()

        def generate_measure_candidates(self):
            return None if self.stats.converged else self.inner.generate_measure_candidates()

        def notify_runner_results(self, measure_candidates, results) -> None:
            self.inner.notify_runner_results(measure_candidates, results)

        def clone(self):
            return UntilConverged(self.inner.clone(), self.stats)

    return UntilConverged(strategy, stats)


_MS_LOGGER = "tvm.s_tir.meta_schedule"


def _prepare_metaschedule_logging() -> None:
    """MetaSchedule rebuilds its logging config on every run, listing the handlers already attached
    by name; an unnamed one (TVM's default, pytest's) makes that config invalid, so drop them."""
    logger = logging.getLogger(_MS_LOGGER)
    for handler in list(logger.handlers):
        if handler.get_name() is None:
            logger.removeHandler(handler)


def _quiet_metaschedule_console() -> None:
    """Under our live display MetaSchedule's console shows warnings only; per-task logs still go
    to DB/logs."""
    for handler in logging.getLogger(_MS_LOGGER).handlers:
        if handler.get_name() == f"{_MS_LOGGER}.console":
            handler.setLevel(logging.WARNING)


def _heuristic(task, cpu):
    """The task's default schedule (a Schedule), or None where it has none."""
    from mobilec.schedules.defaults import default_schedule

    try:
        return default_schedule(task.dispatched[0], cpu)[0]
    except Exception as e:  # noqa: BLE001 - an unschedulable kernel is searched from scratch
        logging.getLogger(__name__).info("no default schedule for %s: %s", task.task_name, e)
        return None


def default_schedules(tasks, target) -> dict:
    """Per task, its default schedule (a Schedule), or None where it has none: computed once per
    tuning run, for the seed records and for telling them from the search's."""
    cpu = cpu_params(target)
    return {t.task_name: _heuristic(t, cpu) for t in tasks}


def seed_decisions(defaults: dict) -> dict[str, list]:
    """Per task, the sampling decisions of its default schedule ([] where it samples nothing):
    what tells a seeded record from a searched one."""
    from mobilec.schedules.defaults import decisions

    return {name: decisions(sch.trace) if sch is not None else [] for name, sch in defaults.items()}


# candidates the evolutionary search evolves per round (MetaSchedule's default: 512). mobilec's
# spaces are the default schedules' tile sizes, tens to a few hundred points a kernel; evolving 512
# of them took 7 s of host time per round of 16 measured candidates on this 2-core host, about a
# third of the round
POPULATION = 128


def tune_contexts(tasks, target, work_dir: str, seeds: dict[str, list], seed: int,
                  stats: Optional[dict[str, TaskStats]] = None):
    """MetaSchedule tuning contexts: a kernel whose default schedule samples its tile sizes is
    searched in exactly that schedule's space (``defaults.search_space``: the same loop structure,
    tile sizes sampled and mutated); any other kernel in MetaSchedule's generic space (multi-level
    tiling, inlining, parallel-vectorise-unroll), seeded with its default schedule's measurement.
    ``stats``: per task, where a task that has converged (``TaskStats.converged``) stops."""
    from functools import partial

    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir
    from tvm.s_tir.meta_schedule.utils import fork_seed

    from mobilec.schedules.defaults import search_space

    cpu = cpu_params(target)
    contexts = []
    loggers = get_loggers_from_work_dir(work_dir, [t.task_name for t in tasks])  # one log file per task
    for task, logger, rand_state in zip(tasks, loggers, fork_seed(seed, n=len(tasks))):
        space = (ms.space_generator.ScheduleFn(partial(search_space, cpu=cpu), sch_rules=[])
                 if seeds.get(task.task_name) else "post-order-apply")
        strategy = ms.search_strategy.EvolutionarySearch(population_size=POPULATION)
        if stats and task.task_name in stats:
            strategy = until_converged(strategy, stats[task.task_name])
        contexts.append(ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator=space,
                                       search_strategy=strategy, task_name=task.task_name, logger=logger,
                                       rand_state=rand_state, num_threads="physical").clone())
    return contexts, [float(t.weight) for t in tasks]


def seed_with_defaults(tasks, target, db, builder, runner, progress: Optional[Progress] = None,
                       defaults: Optional[dict] = None) -> int:
    """Measure mobilec's default schedule of every task the database has nothing for, on the same
    device and runner as the search, and commit it as a tuning record. The evolutionary search
    starts from the best measured records, so it begins at the default schedule (whose tile sizes
    are samples it can mutate), and the database's best is never worse than what a build without
    it gets. Returns records added (these are not search trials: they spend none of the budget)."""
    from tvm.s_tir import meta_schedule as ms

    defaults = defaults if defaults is not None else default_schedules(tasks, target)
    todo = []
    for task in tasks:
        mod = task.dispatched[0]
        if records_for(db, mod):
            continue
        sch = defaults.get(task.task_name)
        if sch is not None:
            todo.append((mod, sch))
    if not todo:
        return 0
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, sch in todo])
    # with the arguments the built kernel takes: its weights already packed (the builder drops the
    # packing block, as MetaSchedule's does for the search's candidates)
    measurable = [(mod, sch, b, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True))
                  for (mod, sch), b in zip(todo, built) if b.error_msg is None]
    for b in built:
        if progress is not None:
            progress.note_error(b.error_msg)
    futures = runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu", args)  # mobilec targets are CPUs
                          for _, _, b, args in measurable])
    added = 0
    for (mod, sch, b, args), future in zip(measurable, futures):
        result = future.result()
        shutil.rmtree(Path(b.artifact_path).parent, ignore_errors=True)  # measured: not needed again
        if result.error_msg is not None or not result.run_secs:
            if progress is not None:
                progress.note_error(result.error_msg)
            continue
        db.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, db.commit_workload(mod), result.run_secs, target, args))
        added += 1
    return added


# of the time left after seeding, for every task's first round (before any result is read), at
# seeding's pace per candidate: seeding builds every task's default in one batch on every core, about
# a third of a search round's time per candidate or less (EfficientNet-B0, 42 kernels: 0.3 of 7.5
# minutes at seeding's pace was 12 candidates a round, and the first rounds took 5+ minutes)
FIRST_ROUNDS_SHARE = 0.1


def _rounds_that_fit(opts: TuneOptions, progress: Progress, tasks: int) -> int:
    """Candidates per round: ``opts.per_round``, or fewer (at least 2) under a time budget, so that
    every task's first round fits in ``FIRST_ROUNDS_SHARE`` of the time left. MetaSchedule's
    gradient scheduler gives every task one round before it reads any result, and the time budget
    is checked when results are read: EfficientNet-B0's 42 kernels x 16 candidates were 13 minutes
    of a 10-minute budget before the first check. The pace is seeding's (a build and a run)."""
    if progress.deadline is None or not progress.seed_pace:
        return opts.per_round
    left = progress.deadline - time.time()
    fit = int(FIRST_ROUNDS_SHARE * left / (tasks * progress.seed_pace))
    per_round = max(2, min(opts.per_round, fit))
    if per_round < opts.per_round:
        logging.getLogger(__name__).info("rounds of %d candidates: every kernel's first round fits the time budget",
                                         per_round)
    return per_round


def tune_module(mod, target, db_dir: Path, fcompile: Callable, opts: TuneOptions, console=None) -> TuneResult:
    """Tune the kernels of ``mod`` (a Relax module after mobilec's lowering phase) for ``target``:
    seed each task with its default schedule, search, then confirm each task's winner by measuring
    it again beside the default (``confirm.py``).

    Candidates are built in a private temporary directory, removed when the run ends however it
    ends. Raises ``TuningFailed`` when every search candidate failed (e.g. code this device cannot
    run), ``DeviceLost`` when the device stopped answering."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    from mobilec.schedules.builder import PooledBuilder

    start = time.time()
    db_dir = Path(db_dir)
    db = open_database(db_dir)
    tasks = select_tasks(extract_tasks(mod, target), opts.all_tasks)
    if not tasks:
        raise TuningError("no tunable tasks in this model" + (" (leave out --conv-only to tune every kernel)"
                                                              if not opts.all_tasks else ""))
    names = dict(zip((t.task_name for t in tasks),
                     unique([kernel_name(t.dispatched[0], t.task_name) for t in tasks])))
    trials = trial_budget(opts)
    per_task = max(opts.per_round, math.ceil(trials / len(tasks)))
    defaults = default_schedules(tasks, target)
    seeds = seed_decisions(defaults)
    done = {t.task_name: searched(valid_records(db, t.dispatched[0]), seeds[t.task_name]) for t in tasks}
    todo = [t for t in tasks if done[t.task_name] < per_task]
    skipped = [names[t.task_name] for t in tasks if t not in todo]
    remaining = trials - sum(done.values())
    stats = [TaskStats(names[t.task_name], float(t.weight), per_task - done[t.task_name], task=t.task_name)
             for t in todo]
    progress = Progress(stats, budget=max(remaining, 0), improved=IMPROVED, bounded=trials < UNBOUNDED)
    if opts.minutes is not None:
        progress.deadline = start + 60.0 * opts.minutes
    if remaining <= 0 or not todo:
        return TuneResult(db_dir, progress, 0, skipped, seconds=time.time() - start)
    confirmed = []
    workdir = tempfile.mkdtemp(prefix="mobilec-tune-")  # every candidate of this run, removed at the end
    live = None
    builder = PooledBuilder(fcompile, workdir, limit_s=opts.build_limit)
    try:
        farm = farm_size(opts) if opts.tracker else 1
        runner = _runner(opts, farm)  # seeding measures like the search
        seeding = time.time()
        seeded = seed_with_defaults(todo, target, db, builder, runner, progress, defaults)
        progress.seed_pace = (time.time() - seeding) / seeded if seeded else None
        measured = {t.task_name: seed_record(valid_records(db, t.dispatched[0]), seeds[t.task_name]) for t in todo
                    if defaults[t.task_name] is not None}  # read again: seeding added records
        progress.start_from({name: mean_ms(r.run_secs) for name, r in measured.items() if r is not None})
        progress.closing = seedings(1)  # the time budget keeps room to confirm each contested task
        per_round = _rounds_that_fit(opts, progress, len(todo))
        progress.patience = PATIENCE_ROUNDS * per_round  # three of the rounds this run measures
        _prepare_metaschedule_logging()
        contexts, weights = tune_contexts(todo, target, str(db_dir), seeds, opts.seed,  # logs in DB/logs
                                          {t.task: t for t in stats})
        _quiet_metaschedule_console()
        echo = None
        if opts.live and console is not None:
            if console.is_terminal:
                from rich.live import Live

                live = Live(progress.render(), console=console, refresh_per_second=2)
                live.start()
            else:  # a log or a pipe: a live table would be reprinted whole on every refresh
                echo = lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
        try:
            with stops.inside_tvm():  # a stop ends the search after its round (ProgressCallback)
                ms.tune_tasks(
                    tasks=contexts, task_weights=weights, work_dir=str(db_dir / "logs"),
                    max_trials_global=remaining, max_trials_per_task=per_task, num_trials_per_iter=per_round,
                    builder=builder, runner=runner, database=db, cost_model="xgb",
                    measure_callbacks=ms.measure_callback.MeasureCallback.create("default")
                    + [ProgressCallback(progress, live, echo)],
                    task_scheduler="gradient")
        except Exception:
            if progress.lost is not None:
                n = len(open_database(db_dir))
                raise DeviceLost(f"the device stopped answering after {progress.trials} trials ({progress.lost}); "
                                 f"{db_dir} is complete up to the last finished round ({n} records) and a rerun "
                                 f"continues from there") from None
            if not (progress.all_failed or progress.out_of_time):
                raise
        if progress.errors < progress.trials:
            confirmed = confirm(todo, target, db, db_dir, builder, runner, seeds, names)
    finally:
        if live is not None:
            live.stop()
        builder.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if progress.trials and progress.errors == progress.trials:
        where = f"the device at {opts.tracker} (key {opts.key})" if opts.tracker else "this machine"
        raise TuningFailed(
            f"all {progress.trials} candidates failed to build or run on {where} for {target_name(target)}; "
            f"the first error: {progress.first_error or 'unknown'}. Check that the device matches --target/--cpu "
            f"(failed candidates spend none of the --trials budget: a rerun tries again)")
    plot = progress.plot(db_dir / "tuning.png")
    return TuneResult(db_dir, progress, progress.trials, skipped, plot, time.time() - start, seeded, farm,
                      confirmed=confirmed)


def target_name(target) -> str:
    attrs = target.attrs
    return " ".join(str(v) for v in (attrs.get("mtriple", target.kind.name), attrs.get("mcpu", "")) if str(v))
