"""Report sections that compare against the baseline precision or across decodings: accuracy per precision x
decoding, paired accuracy drops with their interval, and next-token fidelity."""

from __future__ import annotations

import pandas as pd

from ..results import Record


def decoding_pivot(frame: pd.DataFrame) -> list[str]:
    """Accuracy (%) with one row per model and precision and one column per task and decoding."""
    accuracy = [c for c in frame.columns if c.startswith("acc:")]
    if frame.empty or not accuracy or frame["decoding"].nunique() < 2:
        return []
    index = ["machine", "model", "precision"] if frame["machine"].nunique() > 1 else ["model", "precision"]
    long = frame.melt(id_vars=[*index, "decoding"], value_vars=accuracy, var_name="task",
                      value_name="accuracy").dropna(subset=["accuracy"])
    long["task"] = long["task"].str[4:]
    table = long.pivot_table(index=index, columns=["task", "decoding"], values="accuracy", sort=False)
    table.columns = [f"{task} · {decoding}" for task, decoding in table.columns]
    return ["", "## Accuracy by precision and decoding", "",
            "Accuracy (%) per task under each decoding (sampling: majority vote of 20 responses, or pass@1 for code).",
            "", table.reset_index().to_markdown(index=False, floatfmt=".1f", missingval="–")]


def _pct(value: float) -> str:
    return f"{value:.1f}"


def paired_section(records: list[Record]) -> list[str]:
    """Each accuracy drop against the baseline with its paired interval, McNemar's p and the answer flips."""
    rows = [(r, task, d["vs_baseline"]) for r in records for task, d in r.task_details.items()
            if isinstance(d, dict) and d.get("vs_baseline")]
    if not rows:
        return []
    lines = ["", "## Against the baseline (paired)", "",
             ("Same items under both precisions. Drop in points with a 95% paired bootstrap interval (10,000 "
              "resamples of the items); McNemar's exact test on the flips (right→wrong, wrong→right). An interval "
              "that includes 0 is **not significant**: the drop is within what resampling the items explains. "
              "Length ratio: mean generated tokens over the baseline's."), "",
             "| test | task | vs | drop (pt) | 95% CI (pt) | McNemar p | flips →wrong / →right | items | verdict | length ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for record, task, cmp in rows:
        if "drop_pt" in cmp:
            stats = (f"{_pct(cmp['drop_pt'])} | [{_pct(cmp['ci_low_pt'])}, {_pct(cmp['ci_high_pt'])}] | "
                     f"{cmp['p_value']:.3g} | {cmp['flips_to_wrong']} / {cmp['flips_to_right']} | {cmp['n']} | "
                     f"{cmp['verdict']}")
        else:
            stats = "– | – | – | – | – | –"
        ratio = f"{cmp['length_ratio']:.2f}" if cmp.get("length_ratio") is not None else "–"
        lines.append(f"| `{record.test}` | {task} | {cmp.get('precision', '')} | {stats} | {ratio} |")
    return lines


def fidelity_section(records: list[Record]) -> list[str]:
    """KL divergence and top-1 agreement against the baseline precision, one row per model and precision."""
    seen, rows = set(), []
    for record in records:
        if "kl_mean" in record.metrics and (record.model, record.precision) not in seen:
            seen.add((record.model, record.precision))
            rows.append(record)
    if not rows:
        return []
    lines = ["", "## Fidelity against the baseline", "",
             ("Next-token distributions teacher-forced on the built-in prompt set: KL(baseline ‖ precision) in nats "
              "over the baseline's top-k tokens plus the remaining mass, and how often the most likely token agrees."),
             "", "| model | precision | vs | KL mean | KL p99 | top-1 agreement (%) | positions |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        baseline = r.task_details.get("fidelity", {}).get("baseline", "")
        lines.append(f"| {r.model} | {r.precision} | {baseline} | {r.metrics['kl_mean']:.3g} | "
                     f"{r.metrics['kl_p99']:.3g} | {r.metrics['top1_agreement_pct']:.1f} | "
                     f"{int(r.metrics.get('fidelity_positions', 0))} |")
    return lines
