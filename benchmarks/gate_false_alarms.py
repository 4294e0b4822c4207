"""False-alarm rate and detection of the regression gate, measured with real sessions of one commit.

Each pair is two back-to-back sessions of the same speed test: the first saves a baseline, the second is gated
against it with the default tolerances (`--qb-fail-on` unset). A pair whose second session fails is a false alarm.
Then, for each `--slowdown`, `--slowed` runs of the same session gated against the first pair's (quiet) baseline
while something makes it genuinely slower: `burn-cpu` starts one process per core that spins on the CPU, `burn-gpu`
one that keeps the GPU busy with large matrix products, `patch:FILE` applies a patch to the working tree for those
runs (a code change that slows the product down, reverted afterwards). A slowed run that passes is a missed
regression.

    python benchmarks/gate_false_alarms.py --pairs 10 --slowed 3 --out docs/results/cpu/regression-gate

Extra pytest arguments after `--` replace the default selection (SmolLM2 fp32 greedy on the CPU). Not collected by
pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARGS = ["benchmarks/test_speed.py", "--qb-precision=fp32", "--qb-decoding=greedy"]
CPU_BURN = "while True: pass"
GPU_BURN = ("import torch\na = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)\n"
            "while True:\n    a @ a\n    torch.cuda.synchronize()")


def session(pytest_args: list[str], report_dir: Path, *extra: str) -> dict:
    """One pytest session; its exit code, wall time and the speed records it wrote."""
    command = [sys.executable, "-m", "pytest", *pytest_args, "-p", "no:cacheprovider", "-q",
               f"--qb-report-dir={report_dir}", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    report = report_dir / "quantbench.json"
    records = json.loads(report.read_text())["records"] if report.exists() else []
    if done.returncode not in (0, 1):
        sys.exit(f"session failed to run ({done.returncode}): {' '.join(command)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return {"exit": done.returncode, "wall_s": round(wall, 1),
            "ms_per_token": [r["metrics"].get("ms_per_token") for r in records],
            "failed_checks": [c["message"] for r in records for c in r["checks"] if not c["passed"]],
            "checks": [c["message"] for r in records for c in r["checks"]]}


@contextlib.contextmanager
def slowed_by(slowdown: str):
    """The machine or the code made slower while the block runs."""
    if slowdown.startswith("patch:"):
        patch = str(Path(slowdown.removeprefix("patch:")).resolve())
        subprocess.run(["git", "apply", patch], cwd=ROOT, check=True)
        try:
            yield
        finally:
            subprocess.run(["git", "apply", "-R", patch], cwd=ROOT, check=True)
        return
    code, count = (CPU_BURN, os.cpu_count() or 2) if slowdown == "burn-cpu" else (GPU_BURN, 1)
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    time.sleep(5 if slowdown == "burn-gpu" else 1)  # the GPU burner allocates and starts before the session does
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()


def slowdown_kind(text: str) -> str:
    if text in ("burn-cpu", "burn-gpu") or (text.startswith("patch:") and Path(text[6:]).is_file()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected burn-cpu, burn-gpu or patch:FILE (an existing file)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--slowed", type=int, default=3)
    parser.add_argument("--slowdown", type=slowdown_kind, action="append",
                        help="burn-cpu (the default), burn-gpu or patch:FILE; repeat for several")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("pytest_args", nargs="*", help="after --: the session's selection and options")
    args = parser.parse_args()
    pytest_args = args.pytest_args or DEFAULT_ARGS
    slowdowns = args.slowdown or ["burn-cpu"]
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qb-gate-"))  # every session's full report; the summary keeps the numbers
    pairs = []
    for index in range(args.pairs):
        folder = work / f"pair{index}"
        base = session(pytest_args, folder / "a", f"--qb-save-baseline={folder / 'baseline.json'}")
        gated = session(pytest_args, folder / "b", f"--qb-baseline={folder / 'baseline.json'}")
        pairs.append({"baseline": base, "rerun": gated})
        print(f"pair {index}: {base['ms_per_token']} -> {gated['ms_per_token']} ms/token, exit {gated['exit']}",
              flush=True)
    slowed = []
    for slowdown in slowdowns:
        for index in range(args.slowed):
            with slowed_by(slowdown):
                run = session(pytest_args, work / f"slowed{len(slowed)}",
                              f"--qb-baseline={work / 'pair0' / 'baseline.json'}")
            slowed.append({"slowdown": slowdown, **run})
            print(f"slowed {index} ({slowdown}): {run['ms_per_token']} ms/token, exit {run['exit']}", flush=True)
    false_alarms = sum(p["rerun"]["exit"] != 0 for p in pairs)
    missed = sum(s["exit"] == 0 for s in slowed)
    summary = {"command": " ".join([sys.executable, *sys.argv]), "pytest_args": pytest_args, "slowdowns": slowdowns,
               "pairs": pairs, "slowed": slowed, "false_alarms": false_alarms, "missed_slowdowns": missed,
               "cpu_count": os.cpu_count()}
    # One pair's files, as a user would see them: the saved baseline and the gated rerun's reports
    shutil.copy(work / "pair0" / "baseline.json", args.out / "baseline.json")
    for name in ("quantbench.json", "quantbench.md"):
        shutil.copy(work / "pair0" / "b" / name, args.out / f"rerun-{name}")
        if slowed:
            shutil.copy(work / "slowed0" / name, args.out / f"slowed-{name}")
    (args.out / "gate_false_alarms.json").write_text(json.dumps(summary, indent=2) + "\n")
    # Every session's records and baselines, so a changed gate can be judged again on the same runs (quantbench compare)
    with tarfile.open(args.out / "sessions.tar.gz", "w:gz") as archive:
        for path in sorted(work.rglob("*.json")):
            if path.name in ("quantbench.json", "baseline.json"):
                archive.add(path, arcname=str(path.relative_to(work)))
    lines = ["| run | baseline ms/token | rerun ms/token | change | gate |", "| --- | --- | --- | --- | --- |"]
    for index, pair in enumerate(pairs):
        before, after = pair["baseline"]["ms_per_token"][0], pair["rerun"]["ms_per_token"][0]
        lines.append(f"| pair {index} | {before:.1f} | {after:.1f} | {(after / before - 1) * 100:+.0f}% | "
                     f"{'FAIL' if pair['rerun']['exit'] else 'pass'} |")
    quiet = pairs[0]["baseline"]["ms_per_token"][0]
    for index, run in enumerate(slowed):
        after = run["ms_per_token"][0]
        lines.append(f"| slowed {index} ({run['slowdown']}) | {quiet:.1f} | {after:.1f} | {(after / quiet - 1) * 100:+.0f}% | "
                     f"{'FAIL' if run['exit'] else 'pass'} |")
    lines += ["", (f"False alarms: {false_alarms} of {len(pairs)} same-commit pairs; "
                   f"slowdowns caught: {len(slowed) - missed} of {len(slowed)}.")]
    (args.out / "gate_false_alarms.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
