"""The regression gate of this checkout applied again to the sessions a gate_false_alarms.py run archived.

    python benchmarks/gate_rejudge.py docs/results/cpu/regression-gate/sessions.tar.gz

Three judgements, each with the default tolerances and noise model:

- every same-commit session against every other pair's one-run baseline (all pairs, not only the back-to-back
  ones: sessions minutes apart drift more than neighbours);
- every slowed session against every one-run baseline;
- a baseline that has accumulated the first `--history` sessions (saved one onto the other, as CI does), against
  the remaining same-commit sessions and the slowed ones: the gate from its own pooled spread.

Writes `rejudged.md` and `rejudged.json` beside the archive (or into `--out`). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_quantbench.regression import gate, load_baseline, parse_tolerances, save_baseline
from pytest_quantbench.results import DEFAULT_FAIL_ON, Record, load_report


def records(path: Path) -> list[Record]:
    return [Record.from_dict(r) for r in load_report(path)["records"] if r.get("outcome") in ("passed", "failed")]


def failures(baseline, session: Path, tolerances) -> list[str]:
    return [c.message for record in records(session) for c in gate(baseline, record, tolerances) if not c.passed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sessions", type=Path, help="sessions.tar.gz written by gate_false_alarms.py")
    parser.add_argument("--history", type=int, default=5, help="sessions the accumulated baseline holds")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or args.sessions.parent
    work = Path(tempfile.mkdtemp(prefix="qb-rejudge-"))
    with tarfile.open(args.sessions) as archive:
        archive.extractall(work, filter="data")
    tolerances = parse_tolerances(DEFAULT_FAIL_ON)
    pairs = sorted((p for p in work.glob("pair*") if p.is_dir()), key=lambda p: int(p.name[4:]))
    quiet = [s for p in pairs for s in (p / "a" / "quantbench.json", p / "b" / "quantbench.json")]
    slowed = sorted(work.glob("slowed*/quantbench.json"), key=lambda p: int(p.parent.name[6:]))

    cross, alarms = 0, []
    for pair in pairs:
        baseline = load_baseline(pair / "baseline.json")
        for session in quiet:
            if session.parent.parent != pair:
                cross += 1
                if found := failures(baseline, session, tolerances):
                    alarms.append({"baseline": pair.name, "session": str(session.parent.relative_to(work)),
                                   "failed": found})
    caught = [(pair.name, session.parent.name, bool(failures(load_baseline(pair / "baseline.json"), session,
                                                             tolerances)))
              for pair in pairs for session in slowed]

    history = min(args.history, len(quiet) - 1)
    accumulated = work / "accumulated.json"
    for session in quiet[:history]:
        save_baseline(accumulated, load_report(session))
    grown = load_baseline(accumulated)
    rest = quiet[history:]
    grown_alarms = {str(s.parent.relative_to(work)): failures(grown, s, tolerances) for s in rest}
    grown_caught = {s.parent.name: failures(grown, s, tolerances) for s in slowed}
    example = next(iter(grown.history.values()), {})

    summary = {"sessions": str(args.sessions), "tolerances": DEFAULT_FAIL_ON,
               "cross_comparisons": cross, "cross_false_alarms": alarms,
               "slowed_comparisons": len(caught), "slowed_missed": [c for c in caught if not c[2]],
               "history_runs": history, "history": example,
               "history_false_alarms": {k: v for k, v in grown_alarms.items() if v},
               "history_slowed": grown_caught}
    lines = [f"Re-judged with the gate of this checkout (`{DEFAULT_FAIL_ON}`, default noise model):", "",
             (f"- same-commit sessions against every other pair's one-run baseline: {len(alarms)} false alarms in "
              f"{cross} comparisons"),
             f"- slowed sessions against every one-run baseline: {sum(c[2] for c in caught)} of {len(caught)} caught",
             (f"- a baseline accumulated over {history} sessions: {sum(bool(v) for v in grown_alarms.values())} false "
              f"alarms in {len(rest)} later same-commit sessions; slowed sessions caught: "
              f"{sum(bool(v) for v in grown_caught.values())} of {len(grown_caught)}")]
    for name, messages in grown_caught.items():
        lines += [f"  - {name}: {m}" for m in messages[:1]]
    for alarm in alarms[:5]:
        lines.append(f"  - false alarm, {alarm['session']} against {alarm['baseline']}: {alarm['failed'][0]}")
    if rest:
        gated = [c.message for r in records(rest[0]) for c in gate(grown, r, tolerances)]
        lines += ["", f"A check against the accumulated baseline ({rest[0].parent.relative_to(work)}):", ""]
        lines += [f"    {m}" for m in gated]
    out.mkdir(parents=True, exist_ok=True)
    (out / "rejudged.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "rejudged.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
