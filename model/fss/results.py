"""Few-shot result tables: ``results.json`` (entries keyed by fold, shot, episode protocol,
episode count and, for HSNet's pass, the scoring, so results sit side by side) and
``results.md``, written by :func:`model.fss.evaluate.evaluate`.

Every entry says how it was scored: ``scoring`` (the headline) and ``scores`` (each scoring
of the pass with its label); the table names each number's scoring and marks the one
comparable with the paper's tables (PFENet's).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


def result_key(result: Mapping[str, Any]) -> str:
    """``fold{F}-{K}shot-{protocol}-{E}ep`` for PFENet's canvas pass (scored "pfenet" and
    "exact"), plus ``-{scoring}{size}`` for HSNet's (e.g. ``-hsnet400``)."""
    n = max(result["episodes"]) if result["episodes"] else 0
    key = f"fold{result['fold']}-{result['shot']}shot-{result['protocol']}-{n}ep"
    scoring = result.get("scoring", "exact")
    if scoring.startswith("hsnet"):
        key += f"-{scoring}{result.get('input_size', '')}"
    return key


def write_results(folder: str | Path, result: Mapping[str, Any], *, key: str | None = None) -> Path:
    """Merge ``result`` into ``folder/results.json`` (keyed) and rewrite ``results.md``."""
    from pipeline.fileio import write_json_atomic, write_text_atomic

    folder = Path(folder)
    path = folder / "results.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    k = result_key(result) + (f"-{key}" if key else "")
    data[k] = result
    write_json_atomic(path, data)
    write_text_atomic(folder / "results.md", "\n\n".join(
        format_markdown(v, title=kk) for kk, v in sorted(data.items())) + "\n")
    return path


def _pm(d: Mapping[str, float], scale: float = 100) -> str:
    if d["n"] > 1:
        return f"{d['mean'] * scale:.2f} ± {d['std'] * scale:.2f}"
    return f"{d['mean'] * scale:.2f}"


def _scores(result: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """scoring -> its numbers; results written before scorings were recorded were scored
    with the exact inverse (the only scoring then)."""
    if "scores" in result:
        return dict(result["scores"])
    return {"exact": {"miou": result["miou"], "fb_iou": result["fb_iou"],
                      "per_class": result["per_class"], "label": "exact inverse of the test resize"}}


def format_markdown(result: Mapping[str, Any], *, title: str | None = None) -> str:
    """A Markdown table: mIoU / FB-IoU (mean ± std over seeds, in %) under each scoring of
    the pass, then per class."""
    scores = _scores(result)
    head = result.get("scoring", next(iter(scores)))
    scores = {head: scores[head], **{k: v for k, v in scores.items() if k != head}}  # headline first
    n_seeds = len(result["seeds"])
    size = result.get("input_size", result["crop"])
    where = (f"on PFENet's {size} x {size} test canvas" if not head.startswith("hsnet")
             else f"on HSNet's {size} x {size} square")
    lines = [f"### {title or result_key(result)}", "",
             f"{result['dataset']} fold {result['fold']}, {result['shot']}-shot, "
             f"{result['protocol']} episodes x {n_seeds} seed(s) {result['seeds']}, "
             f"{max(result['episodes']) if result['episodes'] else 0} episodes each, "
             f"{'QGNet' if result.get('use_prior_map', True) else 'baseline (no prior map)'}, "
             f"predicted {where}.", "",
             "| scoring | mIoU (%) | FB-IoU (%) | what it is |", "|---|---|---|---|"]
    for name, sc in scores.items():
        mark = " (headline)" if name == head and len(scores) > 1 else ""
        lines.append(f"| {name}{mark} | {_pm(sc['miou'])} | {_pm(sc['fb_iou'])} | {sc.get('label', '')} |")
    lines += ["", "| class | " + " | ".join(f"IoU {name} (%)" for name in scores) + " |",
              "|---|" + "---|" * len(scores)]
    for c, v in scores[head]["per_class"].items():
        cells = []
        for name in scores:
            pc = scores[name]["per_class"].get(c)
            cells.append(_pm({"mean": pc["mean"], "std": pc["std"], "n": n_seeds}) if pc else "–")
        lines.append(f"| {c} {v['name']} | " + " | ".join(cells) + " |")
    missing = scores[head].get("missing_classes") or []
    if missing:
        alls = scores[head].get("miou_all_classes")
        lines += ["", f"Classes without an episode: {missing}; they are left out of mIoU. PFENet's "
                      f"and HSNet's average counts them as 0"
                  + (f": {head} mIoU {_pm(alls)} %." if alls else ".")]
    lines += ["", f"{result['episodes_per_s']:.2f} episodes/s on {result['device']} (batch "
                  f"{result['batch_size']}, {'bf16' if result.get('amp') else 'fp32'}), peak memory "
                  f"{result['peak_memory_mb']} MiB ({result['peak_memory_kind']})."]
    runs = result.get("runs", [])
    if runs and runs[0].get("guided"):
        lines += ["", "| threshold | guided recall | prior recall |", "|---|---|---|"]
        for t, g in runs[0]["guided"]["recall"].items():
            p = runs[0]["prior"]["recall"][t] if runs[0].get("prior") else float("nan")
            lines.append(f"| {t} | {g * 100:.2f} | {p * 100:.2f} |")
    return "\n".join(lines)
