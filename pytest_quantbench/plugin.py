"""pytest hooks: options, parametrization, ordering, the fixture, record relay (also under xdist), the report.

No torch or transformers import at module level: `pytest --help` and plain test runs stay fast.
"""

from __future__ import annotations

import json
import os
import shlex
import zlib
from pathlib import Path

import pytest

from .errors import ModelLoadError
from .precisions import parse_precision
from .report_dir import ReportDir
from .results import Record, environment, package_version
from .session import Case, QuantbenchSession, k_safe
from .settings import add_options, check_marker, gpus_per_worker, marker_keywords, read_settings
from .tasks.generation import DatasetError

SESSION = pytest.StashKey[QuantbenchSession]()
BENCH = pytest.StashKey[object]()  # the test's QuantBenchmark, read by the call and report hooks
CASE_ARG = "qb_case"
MARKER = "quantbench"
NARROWING = ("models", "precisions", "decodings", "modes")


def pytest_addoption(parser):
    group = parser.getgroup("quantbench", "quantbench: LLM quantization benchmarks")
    add_options(group.addoption, parser.addini)


def pytest_configure(config):
    keywords = ", ".join(f"{key}=None" for key in marker_keywords(NARROWING))  # the keys check_marker accepts
    config.addinivalue_line(
        "markers",
        f"{MARKER}({keywords}): narrow this test's model x precision x decoding x mode matrix and set its thresholds",
    )
    # Raised by torch itself when a library it imports defines TorchScript methods, once per method: 14 lines of a
    # warnings summary the user can do nothing about.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
    try:
        _pin_worker_gpus(config, gpus_per_worker(config))  # before the settings: resolving the device may start CUDA
        settings = read_settings(config)
    except (ValueError, ModelLoadError) as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[SESSION] = QuantbenchSession(config, settings)
    config.pluginmanager.register(SessionHooks(config), "quantbench-session")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under `-n N` (plain `--dist load`), keep each (model, precision) on one worker so it loads once."""
    if config.getvalue("dist") != "load":
        return None
    from .distribute import ModelPrecisionScheduling

    settings = config.stash[SESSION].settings
    groups = [k_safe(f"{m.name}-{p.name}") for m in settings.models for p in settings.precisions]
    return ModelPrecisionScheduling(config, log, groups)


def _pin_worker_gpus(config, per_worker: int) -> None:
    """Under xdist with GPUs, give each worker its own block of GPUs before anything initializes CUDA."""
    worker = getattr(config, "workerinput", {}).get("workerid")
    workers = getattr(config.option, "numprocesses", None) or 0
    device = (config.getoption("qb_device") or config.getini("qb_device") or "auto").lower()
    if device == "cpu" or (worker is None and not workers):
        return
    from .gpus import visible_gpus, worker_gpus

    gpus = visible_gpus()
    if not gpus:
        return  # no GPU here: cuda cases skip with their own reason
    try:
        if worker is None:  # the controller checks that every worker will get its GPUs
            worker_gpus(f"gw{int(workers) - 1}", per_worker, gpus)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(worker_gpus(worker, per_worker, gpus))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def _version(name: str) -> str:
    return package_version(name) or "not installed"


def pytest_report_header(config):
    get = lambda key: config.getoption(key) or config.getini(key)
    models = get("qb_model")
    return (f"quantbench: device {get('qb_device')}, models {models if isinstance(models, str) else ','.join(models)}, "
            f"torch {_version('torch')}, transformers {_version('transformers')}, "
            f"bitsandbytes {_version('bitsandbytes')}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}")


def _marker_kwargs(definition) -> dict:
    kwargs: dict = {}
    for mark in reversed(list(definition.iter_markers(MARKER))):  # closest marker wins
        kwargs.update(mark.kwargs)
    # One name counts as a list of one (`precisions="nf4"`), not as a sequence of letters.
    return {k: [v] if k in NARROWING and isinstance(v, str) else v for k, v in kwargs.items()}


def pytest_generate_tests(metafunc):
    if CASE_ARG not in metafunc.fixturenames:
        return
    session = metafunc.config.stash[SESSION]
    kwargs = _marker_kwargs(metafunc.definition)
    try:
        check_marker(kwargs, NARROWING)
        cases = session.cases(**{k: kwargs.get(k) for k in NARROWING})
    except (ValueError, ModelLoadError) as error:
        # A collection error shows its message alone; a UsageError raised here would come with pluggy's stack.
        raise pytest.Collector.CollectError(f"{metafunc.definition.nodeid}: {MARKER} marker: {error}") from None
    metafunc.parametrize(CASE_ARG, cases, ids=[c.id for c in cases])


def pytest_collection_modifyitems(session, config, items):
    """Run all tests of one (model, precision) together, the baseline precision first, so each loads once; within
    it, all tests of one batch size together, so a compiled decode step is compiled once per batch size and its
    static cache made anew only when the batch size changes."""
    state = config.stash[SESSION]
    # A test whose marker narrows the matrix to nothing gets pytest's empty-parameter-set placeholder, not a Case.
    cases = [(item, item.callspec.params.get(CASE_ARG) if hasattr(item, "callspec") else None) for item in items]
    cases = [(item, case if isinstance(case, Case) else None) for item, case in cases]
    if any(case for _, case in cases):
        settings = state.settings
        models = [c.model.name for _, c in cases if c]
        precisions = [settings.baseline_precision.name] + [c.precision.name for _, c in cases if c]

        def key(pair):
            _item, case = pair
            if case is None:
                return (0, 0, 0, 0)
            return (1, models.index(case.model.name), precisions.index(case.precision.name),
                    settings.batch_sizes.index(case.batch_size))

        cases.sort(key=key)
        items[:] = [item for item, _ in cases]
    if state.settings.shard:
        _keep_shard(config, items, cases, *state.settings.shard)


def _keep_shard(config, items, cases, index: int, count: int) -> None:
    """Deselect all but shard `index` of `count`: the (model, precision) groups, in collection order, dealt out in
    turn; other tests by a hash of their id. Every shard collects the same items, so the parts are disjoint."""
    groups: dict[tuple[str, str], int] = {}
    for _, case in cases:
        if case:
            groups.setdefault((case.model.name, case.precision.name), len(groups))

    def shard_of(item, case) -> int:
        position = groups[(case.model.name, case.precision.name)] if case else zlib.crc32(item.nodeid.encode())
        return position % count + 1

    kept = [item for item, case in cases if shard_of(item, case) == index]
    deselected = [item for item, case in cases if shard_of(item, case) != index]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept


@pytest.fixture
def quantbench(request, qb_case: Case):
    """One cell of the model x precision x decoding matrix: `.model`, `.measure()`, `.evaluate(task)`."""
    from .fixture import QuantBenchmark

    session = request.config.stash[SESSION]
    settings = session.settings
    kwargs = _marker_kwargs(request.node)
    try:
        thresholds = settings.thresholds.updated(**{k: v for k, v in kwargs.items() if k not in (*NARROWING, "baseline")})
    except ValueError as error:
        pytest.fail(f"{MARKER} marker: {error}", pytrace=False)
    baseline = parse_precision(kwargs["baseline"]) if kwargs.get("baseline") else settings.baseline_precision
    bench = QuantBenchmark(session, qb_case, request.node.nodeid, thresholds, baseline, request)
    request.node.stash[BENCH] = bench
    reason = qb_case.precision.why_unavailable(settings.device)
    if reason is None and qb_case.mode == "compiled":
        from .compiled import why_not_compiled

        reason = why_not_compiled(qb_case.decoding)
    if reason is None and settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            reason = "--qb-device cuda but no CUDA GPU is visible"
    if reason:
        pytest.skip(reason)
    yield bench
    bench.release()  # the item outlives the test: drop its model reference so the cache can free the model


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    failure = None
    try:
        result = yield
    except (ModelLoadError, DatasetError) as error:  # the message names the model or data file and the problem
        failure = f"{type(error).__name__}: {error}"
    if failure:  # failed outside the except block: pytest then shows no chained exception, and no stack
        pytest.fail(failure, pytrace=False)
    bench = item.stash.get(BENCH, None)
    if bench is not None:
        bench.enforce_thresholds()
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    bench = item.stash.get(BENCH, None)
    finished = report.when == "call" or (report.when == "setup" and not report.passed)
    if bench is not None and finished:
        reason = None
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].removeprefix("Skipped: ")
        elif report.failed:
            reason = getattr(call.excinfo, "exconly", lambda: str(report.longrepr))()
        record = bench.build_record(report.outcome, reason)
        report.quantbench_record = record.as_dict()  # travels to the xdist controller with the report
        # JUnit XML writes the item's properties with the teardown report.
        properties = [*((f"qb_{name}", v) for name, v in record.metrics.items()),
                      *((f"qb_accuracy_pct_{t}", v) for t, v in record.accuracy_pct.items())]
        item.user_properties.extend((name, _junit_value(v)) for name, v in properties if v is not None)
    if report.skipped and isinstance(report.longrepr, tuple) and bench is not None and \
            Path(report.longrepr[0]).resolve().is_relative_to(Path(__file__).parent):
        # A skip the plugin decided (no GPU, a missing library) points at the test, not at the plugin's own line.
        filename, line = item.reportinfo()[:2]
        report.longrepr = (str(filename), (line or 0) + 1, report.longrepr[2])
    return report


def _junit_value(value) -> str:
    """A metric as JUnit XML shows it: numbers as numbers, booleans as true/false (not Python's reprs)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


class SessionHooks:
    """Hooks that need the session state but receive no config: registered per session in pytest_configure."""

    def __init__(self, config):
        self.config = config
        self.report_dir: ReportDir | None = None  # the controller's, claimed once quantbench tests are collected
        self.nodes_down: dict[str, str] = {}  # xdist worker id -> why it went down
        self._cases: list[Case] | None = None

    @property
    def state(self) -> QuantbenchSession:
        return self.config.stash[SESSION]

    @property
    def command(self) -> str:
        return shlex.join(["pytest", *self.config.invocation_params.args])  # pasted into a shell, it runs again

    def claim_report_dir(self, late: bool = False) -> None:
        """Lock the report directory and check it takes writes, before any test runs; a session that runs no
        quantbench test leaves it alone. `late`: claimed at the first record, where a refusal is an error line."""
        if self.report_dir is not None or _is_worker(self.config) or self.config.option.collectonly:
            return
        report_dir = ReportDir(self.state.settings.report_dir)
        try:
            report_dir.claim(self.command)
        except ValueError as error:
            if not late:
                raise pytest.UsageError(str(error)) from None
            report_dir.errors.append(f"{error}; this session's results are not saved")
        self.report_dir = report_dir
        self.config.add_cleanup(report_dir.release)

    def pytest_collection_finish(self, session):
        if any(isinstance(getattr(item, "callspec", None) and item.callspec.params.get(CASE_ARG), Case)
               for item in session.items):
            self.claim_report_dir()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        # Under xdist the controller collects nothing: the first worker's test ids say whether quantbench runs.
        if any(self.case_of(nodeid) for nodeid in ids):
            self.claim_report_dir()

    def case_of(self, nodeid: str) -> Case | None:
        """The matrix cell a test id names (`test[<model>-<precision>-<decoding>...]`), or None."""
        if self._cases is None:
            self._cases = sorted(self.state.cases(), key=lambda c: len(c.id), reverse=True)
        params = f"-{nodeid[nodeid.find('[') + 1:-1]}-" if nodeid.endswith("]") else ""
        return next((case for case in self._cases if f"-{case.id}-" in params), None)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        if error:
            self.nodes_down[node.gateway.id] = str(error)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem, report, sched):
        """A test whose xdist worker died is a crashed record, kept when xdist runs the test again on a new worker."""
        case = self.case_of(crashitem)
        if case is None:
            return
        worker = report.node.gateway.id
        down = self.nodes_down.get(worker)
        record = Record(crashitem, case.model.name, case.precision.name, case.decoding.name, self.state.settings.device,
                        outcome="crashed", reason=f"{report.longrepr}" + (f" (node down: {down})" if down else ""),
                        worker=worker, mode=case.mode, batch_size=case.batch_size)
        report.quantbench_record = record.as_dict()

    def pytest_runtest_logreport(self, report):
        data = getattr(report, "quantbench_record", None)
        if data is not None:
            self.state.records.append(Record.from_dict(data))
            self.claim_report_dir(late=True)  # already claimed, unless an xdist test id did not name its case
            if self.report_dir is not None:  # the first record starts this session's journal, its environment first
                self.report_dir.write(data, lambda: environment(data["device"], self.command))

    def pytest_sessionfinish(self, session):
        report_dir = self.report_dir
        if report_dir is None:
            return
        records, settings = self.state.records, self.state.settings
        if records and report_dir.held:
            from .report.writer import write_reports

            try:
                paths = write_reports(records, settings.report_dir, self.command)
                self.state.report_paths = paths
                if settings.save_baseline_file:
                    from .regression import save_baseline

                    save_baseline(settings.save_baseline_file, json.loads(paths[0].read_text(encoding="utf-8")))
                    paths.append(settings.save_baseline_file)
                summary = os.environ.get("GITHUB_STEP_SUMMARY")
                if summary:  # GitHub Actions shows this file on the run's page
                    with open(summary, "a", encoding="utf-8") as handle:
                        handle.write(paths[1].read_text(encoding="utf-8") + "\n")
            except OSError as error:
                report_dir.failed("the report", error)
        if report_dir.errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED  # results that could not be saved fail the run
        report_dir.finish(session.exitstatus, len(records))

    def pytest_terminal_summary(self, terminalreporter):
        report_dir, records = self.report_dir, self.state.records
        if report_dir is None or not (records or report_dir.notices or report_dir.errors):
            return
        from .report.markdown import terminal_table

        terminalreporter.write_sep("=", "quantbench")
        if records:
            terminalreporter.write_line(terminal_table(records))
        for i, record in enumerate(records):
            if record.outcome == "crashed":
                rerun = next((r for r in records[i + 1:] if r.test == record.test and r.outcome != "crashed"), None)
                again = f"; its rerun on {rerun.worker} {rerun.outcome}" if rerun else ""
                terminalreporter.write_line(f"crashed: {record.reason}{again}", red=True)
        for path in self.state.report_paths:
            terminalreporter.write_line(f"report: {path}")
        if report_dir.journal:
            terminalreporter.write_line(f"journal: {report_dir.journal}")
        for notice in report_dir.notices:
            terminalreporter.write_line(f"quantbench: {notice}", yellow=True)
        for error in report_dir.errors:
            terminalreporter.write_line(f"quantbench error: {error}", red=True)


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")
