"""CPU peak memory of each precision run alone and after the others in one session: the figure must not depend on
what ran before.

From the repository root (each session is its own `pytest` process, so "alone" is a fresh process):

    python benchmarks/memory_history.py --precisions fp32,bf16,int8,nf4,fp4

It runs `benchmarks/test_memory.py` once per precision alone, then once with all of them in the order given, and
prints per precision `peak_mem_mb` alone and in the session (and the difference), with the raw sampled RSS peak
(`rss_peak_mb`) beside it. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def session(model: str, precisions: str, folder: Path) -> dict[str, dict]:
    """precision -> the metrics of its test_memory record, from one pytest process."""
    command = [sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "test_memory.py"), "-q",
               "-p", "no:cacheprovider", f"--qb-model={model}", f"--qb-precision={precisions}",
               "--qb-decoding=greedy", "--qb-repeats=1", "--qb-warmup=0", f"--qb-report-dir={folder}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    records = json.loads((folder / "quantbench.json").read_text())["records"]
    return {r["precision"]: r["metrics"] for r in records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--precisions", default="fp32,bf16,int8,nf4,fp4")
    args = parser.parse_args()
    names = args.precisions.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        alone = {name: session(args.model, name, Path(scratch) / name)[name] for name in names}
        together = session(args.model, args.precisions, Path(scratch) / "together")
    print(f"model {args.model}; session order {args.precisions}; MB")
    print(f"{'precision':10} {'alone':>9} {'session':>9} {'diff %':>7} {'rss alone':>10} {'rss session':>12}")
    for name in names:
        a, b = alone[name], together[name]
        diff = 100 * (b["peak_mem_mb"] - a["peak_mem_mb"]) / a["peak_mem_mb"]
        print(f"{name:10} {a['peak_mem_mb']:9.1f} {b['peak_mem_mb']:9.1f} {diff:+7.1f} {a['rss_peak_mb']:10.1f} "
              f"{b['rss_peak_mb']:12.1f}")


if __name__ == "__main__":
    main()
