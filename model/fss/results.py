"""Few-shot result tables: ``results.json`` (entries keyed by fold, shot, protocol and
episode count, so 1- and 5-shot results sit side by side) and ``results.md``, written by
:func:`model.fss.evaluate.evaluate`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


def result_key(result: Mapping[str, Any]) -> str:
    n = max(result["episodes"]) if result["episodes"] else 0
    return f"fold{result['fold']}-{result['shot']}shot-{result['protocol']}-{n}ep"


def write_results(folder: str | Path, result: Mapping[str, Any], *, key: str | None = None) -> Path:
    """Merge ``result`` into ``folder/results.json`` (keyed) and rewrite ``results.md``."""
    from pipeline.fileio import write_json_atomic

    folder = Path(folder)
    path = folder / "results.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    k = result_key(result) + (f"-{key}" if key else "")
    data[k] = result
    write_json_atomic(path, data)
    md = folder / "results.md"
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text("\n\n".join(format_markdown(v, title=kk) for kk, v in sorted(data.items())) + "\n")
    tmp.replace(md)
    return path


def _pm(d: Mapping[str, float], scale: float = 100) -> str:
    if d["n"] > 1:
        return f"{d['mean'] * scale:.2f} ± {d['std'] * scale:.2f}"
    return f"{d['mean'] * scale:.2f}"


def format_markdown(result: Mapping[str, Any], *, title: str | None = None) -> str:
    """A Markdown table: mIoU / FB-IoU (mean ± std over seeds, in %) and per class."""
    lines = [f"### {title or result_key(result)}", "",
             f"{result['dataset']} fold {result['fold']}, {result['shot']}-shot, "
             f"{result['protocol']} episodes x {len(result['seeds'])} seed(s) {result['seeds']}, "
             f"{max(result['episodes']) if result['episodes'] else 0} episodes each, "
             f"{'QGNet' if result.get('use_prior_map', True) else 'baseline (no prior map)'}, "
             f"scored at the original label resolution.", "",
             "| metric | value (%) |", "|---|---|",
             f"| mIoU | {_pm(result['miou'])} |", f"| FB-IoU | {_pm(result['fb_iou'])} |"]
    for c, v in result["per_class"].items():
        d = {"mean": v["mean"], "std": v["std"], "n": len(result["seeds"])}
        lines.append(f"| {c} {v['name']} | {_pm(d)} |")
    lines += ["", f"{result['episodes_per_s']:.2f} episodes/s on {result['device']} (batch "
                  f"{result['batch_size']}), peak memory {result['peak_memory_mb']} MiB "
                  f"({result['peak_memory_kind']})."]
    runs = result.get("runs", [])
    if runs and runs[0].get("guided"):
        lines += ["", "| threshold | guided recall | prior recall |", "|---|---|---|"]
        for t, g in runs[0]["guided"]["recall"].items():
            p = runs[0]["prior"]["recall"][t] if runs[0].get("prior") else float("nan")
            lines.append(f"| {t} | {g * 100:.2f} | {p * 100:.2f} |")
    return "\n".join(lines)
