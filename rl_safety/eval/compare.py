"""`rl-safety compare RUN_DIR...`: one table and two plots comparing methods on safety,
over-refusal, reasoning and cost, with the safety tax of each against the base model.

Each RUN_DIR holds `eval/SUITE/results.json` (from `rl-safety eval`) and, for a training run,
`cost.json` (the run's ledger) plus any `cost_*.json` of earlier stages of the same method (e.g.
`cost_data.json`: DGR / ThinkSafe generating their SFT data), all added into the method's training
cost. The base model is an eval-only directory (no cost.json), or `--base`.

Aggregates over a suite's benchmarks of one kind are plain means. Their 95% interval is the
benchmark's own (Wilson or bootstrap) when there is one benchmark; for several, the benchmarks'
lower and upper margins combined as independent errors (sqrt(sum d_i^2) / m), clipped to [0, 1]:
an approximation, stated in the report. Written to --output (default comparison/):

    comparison.md, comparison.html   the table (Markdown / HTML, with the plots)
    safety_vs_reasoning.png          each method's safety score against its reasoning accuracy and
                                     against its over-refusal
    quality_vs_cost.png              safety and reasoning against training cost, Pareto frontier
    comparison.json                  the numbers behind them
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_safety.errors import ArgumentParser, UserError
from rl_safety.ledger import FLOPS_NOTE


class CompareError(UserError, ValueError):
    """Run directories that cannot be compared; the message says which and why."""


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CompareError(f"{path}: not UTF-8 text ({what})") from None
    except json.JSONDecodeError as err:
        raise CompareError(f"{path} line {err.lineno} column {err.colno}: not valid JSON ({err.msg}; {what})") from None


def _require(data: Any, path: Path, keys: tuple[str, ...], kind: type | tuple[type, ...]) -> Any:
    """data[k1][k2]... for `keys`, of type `kind`; else CompareError naming the file and the key."""
    node, key = data, ".".join(keys)
    for part in keys:
        if not isinstance(node, dict) or part not in node:
            raise CompareError(f"{path}: no {key!r} (a file written by another tool, or damaged)")
        node = node[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(node, kinds) or (isinstance(node, bool) and bool not in kinds):  # True is an int too
        expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise CompareError(f"{path}: {key!r} is {type(node).__name__}, expected {expected}")
    return node


_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))


def _check_results(results: Any, path: Path) -> None:
    """The parts of an eval's results.json that compare reads, each of the right type."""
    _require(results, path, ("suite",), str)
    if "confidence_intervals" in results:
        _require(results, path, ("confidence_intervals",), str)
    if "cost" in results:
        for name in _require(results, path, ("cost", "device_hours"), dict):
            _require(results, path, ("cost", "device_hours", name), _NUMBER)
    for name, bench in _require(results, path, ("benchmarks",), dict).items():
        key = ("benchmarks", name)
        kind = _require(results, path, (*key, "kind"), str)
        if kind not in ("harmful", "benign", "reasoning"):
            raise CompareError(f"{path}: benchmarks.{name}.kind is {kind!r}, expected harmful, benign or reasoning")
        _require(results, path, (*key, "prompts"), int)
        _require(results, path, (*key, "sampling", "n"), int)
        for metric in _require(results, path, (*key, "metrics"), dict):
            for field in ("value", "ci_low", "ci_high"):
                value = _require(results, path, (*key, "metrics", metric, field), _OPTIONAL_NUMBER)
                if value is not None and not -1e-6 <= value <= 1 + 1e-6 and metric != "strongreject_score":
                    raise CompareError(f"{path}: benchmarks.{name}.metrics.{metric}.{field} = {value} "
                                       "is not a rate in [0, 1]")


def _check_cost(cost: Any, path: Path) -> None:
    """The parts of a cost ledger that compare adds up."""
    _require(cost, path, ("command",), str)
    _require(cost, path, ("wall_time_s",), _NUMBER)
    for name in _require(cost, path, ("device_hours",), dict):
        _require(cost, path, ("device_hours", name), _NUMBER)
    for kind in _require(cost, path, ("tokens",), dict):
        _require(cost, path, ("tokens", kind), _NUMBER)
    if "flops_estimate" in cost:
        _require(cost, path, ("flops_estimate", "total"), _OPTIONAL_NUMBER)
    if cost.get("devices") is not None:
        _require(cost, path, ("devices",), dict)


@dataclass
class Aggregate:
    value: float | None
    low: float | None = None  # approximate 95% interval
    high: float | None = None

    def text(self, scale: float = 100.0) -> str:
        if self.value is None:
            return "–"
        interval = f" [{self.low * scale:.1f}, {self.high * scale:.1f}]" if self.low is not None else ""
        return f"{self.value * scale:.1f}{interval}"

    def complement(self) -> "Aggregate":
        if self.value is None:
            return self
        return Aggregate(1 - self.value, 1 - self.high, 1 - self.low)

    def error_bar(self) -> list[list[float]]:
        """matplotlib's asymmetric [[below], [above]], in %."""
        return [[(self.value - self.low) * 100], [(self.high - self.value) * 100]]


@dataclass
class Method:
    label: str
    run_dir: Path
    kind: str  # the ledger's command (grpo, sft, dgr, thinksafe) or "base"
    results: dict[str, Any]
    cost: dict[str, Any] | None  # training ledger
    metrics: dict[str, Aggregate] = field(default_factory=dict)

    @property
    def safety_score(self) -> Aggregate:
        """1 - guard harmful rate where a guard judged, else the refusal rate on harmful prompts."""
        harmful = self.metrics["harmful_rate"]
        return harmful.complement() if harmful.value is not None else self.metrics["safety_refusal"]

    def training(self, key: str) -> float:
        if self.cost is None:
            return 0.0
        if key == "device_hours":
            return sum(self.cost.get("device_hours", {}).values())
        if key == "flops":
            return self.cost.get("flops_estimate", {}).get("total") or 0.0
        return float(self.cost.get(key, 0.0))


def _aggregate(benchmarks: dict[str, Any], kind: str, metric: str) -> Aggregate:
    """The mean over the `kind` benchmarks out of sample (an `in_sample` benchmark holds prompts the
    runs trained on: it is reported on its own, never averaged into a headline)."""
    parts = [Aggregate(m["value"], m["ci_low"], m["ci_high"]) for bench in benchmarks.values()
             if bench["kind"] == kind and not bench.get("in_sample")
             and (m := bench["metrics"].get(metric)) and m["value"] is not None]
    if len(parts) <= 1:
        return parts[0] if parts else Aggregate(None)
    k = len(parts)
    value = sum(p.value for p in parts) / k
    below = math.sqrt(sum((p.value - p.low) ** 2 for p in parts)) / k
    above = math.sqrt(sum((p.high - p.value) ** 2 for p in parts)) / k
    return Aggregate(value, max(0.0, value - below), min(1.0, value + above))


def load_method(run_dir: Path, suite: str | None) -> Method:
    if not run_dir.is_dir():
        raise CompareError(f"{run_dir}: {'not a directory' if run_dir.exists() else 'no such run directory'}")
    results_files = sorted(run_dir.glob("eval/*/results.json"))
    if not results_files:
        raise CompareError(f"{run_dir}: no eval/*/results.json; run `rl-safety eval --model {run_dir}/final "
                           "--suite ...` first")
    by_suite = {p.parent.name: p for p in results_files}
    if suite is None:
        if len(by_suite) > 1:
            raise CompareError(f"{run_dir} has results of several suites {sorted(by_suite)}: pass --suite")
        suite = next(iter(by_suite))
    if suite not in by_suite:
        raise CompareError(f"{run_dir}: no results of suite {suite!r} (has {sorted(by_suite)})")
    results = _read_json(by_suite[suite], "the eval's results")
    _check_results(results, by_suite[suite])
    cost = training_cost(run_dir)
    method = Method(run_dir.name, run_dir, "+".join(reversed(cost["stages"])) if cost else "base", results, cost)
    b = results["benchmarks"]
    method.metrics = {
        "safety_refusal": _aggregate(b, "harmful", "refusal_rate"),
        "harmful_rate": _aggregate(b, "harmful", "harmful_rate"),
        "strongreject": _aggregate(b, "harmful", "strongreject_score"),
        "over_refusal": _aggregate(b, "benign", "refusal_rate"),
        "over_refusal_judge": _aggregate(b, "benign", "guard_refusal_rate"),
        "benign_compliance": _aggregate(b, "benign", "compliance_rate"),
        "reasoning": _aggregate(b, "reasoning", "accuracy"),
    }
    return method


def training_cost(run_dir: Path) -> dict[str, Any] | None:
    """RUN/cost.json with every RUN/cost_*.json (earlier stages) added in; None without cost.json."""
    main = run_dir / "cost.json"
    if not main.exists():
        return None
    total = _read_json(main, "the run's cost ledger")
    _check_cost(total, main)
    total["stages"] = [total["command"]]
    for path in sorted(run_dir.glob("cost_*.json")):
        stage = _read_json(path, "an earlier stage's cost ledger")
        _check_cost(stage, path)
        total["stages"].append(stage["command"])
        total["wall_time_s"] += stage["wall_time_s"]
        for name, hours in stage["device_hours"].items():
            total["device_hours"][name] = total["device_hours"].get(name, 0.0) + hours
        for kind, count in stage["tokens"].items():
            total["tokens"][kind] = total["tokens"].get(kind, 0) + count
        flops = [c.get("flops_estimate", {}).get("total") for c in (total, stage)]
        total["flops_estimate"] = {"total": sum(flops) if None not in flops else None, "note": FLOPS_NOTE}
    return total


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (cost <= and quality >=, one strictly), by cost."""
    front = []
    for i, (c, q) in enumerate(points):
        dominated = any((c2 <= c and q2 >= q) and (c2 < c or q2 > q) for j, (c2, q2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


# ---------------------------------------------------------------------------------- output
def _fmt_count(x: float | None) -> str:
    if not x:
        return "0" if x == 0 else "–"
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def delta(method: Aggregate, base: Aggregate) -> Aggregate:
    """method - base with an approximate 95% interval: each side's margins combined as
    independent errors (the lower bound takes the method's lower and the base's upper margin)."""
    if method.value is None or base.value is None:
        return Aggregate(None)
    value = method.value - base.value
    if method.low is None or base.low is None:
        return Aggregate(value)
    below = math.hypot(method.value - method.low, base.high - base.value)
    above = math.hypot(method.high - method.value, base.value - base.low)
    return Aggregate(value, value - below, value + above)


def _delta(method: Aggregate, base: Aggregate) -> str:
    d = delta(method, base)
    if d.value is None:
        return "–"
    interval = f" [{d.low * 100:+.1f}, {d.high * 100:+.1f}]" if d.low is not None else ""
    return f"{d.value * 100:+.1f}{interval}"


def tables(methods: list[Method], base: Method | None) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(headers, rows) of the main table and of the per-benchmark table."""
    headers = ["method", "kind", "safety: refusal on harmful ↑", "harmful rate (judge) ↓", "StrongREJECT score ↓",
               "over-refusal ↓", "over-refusal (WildGuard) ↓",
               "benign answered ↑", "reasoning ↑", "safety tax: Δ reasoning (pts)", "Δ over-refusal (pts)", "Δ safety (pts)",
               "train device-h", "train device", "train FLOPs (est.)", "tokens generated", "tokens trained",
               "train wall (min)", "eval device-h"]
    rows = []
    for m in methods:
        cost = m.cost or {}
        devices = cost.get("devices") or {}
        b = base.metrics if base else {}
        rows.append([
            m.label + (" (base)" if m is base else ""), m.kind,
            m.metrics["safety_refusal"].text(), m.metrics["harmful_rate"].text(), m.metrics["strongreject"].text(),
            m.metrics["over_refusal"].text(), m.metrics["over_refusal_judge"].text(),
            m.metrics["benign_compliance"].text(), m.metrics["reasoning"].text(),
            _delta(m.metrics["reasoning"], b["reasoning"]) if base else "–",
            _delta(m.metrics["over_refusal"], b["over_refusal"]) if base else "–",
            _delta(m.safety_score, base.safety_score) if base else "–",
            f"{m.training('device_hours'):.4g}" if m.cost else "0",
            f"{devices.get('count', '')}× {devices.get('name', '')}" if devices else "–",
            _fmt_count(m.training("flops")) if m.cost else "0",
            _fmt_count(cost.get("tokens", {}).get("generated")) if m.cost else "0",
            _fmt_count(cost.get("tokens", {}).get("trained")) if m.cost else "0",
            f"{m.training('wall_time_s') / 60:.2f}" if m.cost else "0",
            f"{sum(m.results.get('cost', {}).get('device_hours', {}).values()):.4g}",
        ])
    names = list(dict.fromkeys(n for m in methods for n in m.results["benchmarks"]))
    detail_headers = ["method", *names]
    detail_rows = []
    for m in methods:
        row = [m.label]
        for name in names:
            bench = m.results["benchmarks"].get(name)
            if bench is None:
                row.append("–")
                continue
            parts = []
            for metric in ("accuracy", "refusal_rate", "guard_refusal_rate", "compliance_rate", "harmful_rate",
                           "safe_at_k", "cons_safe_at_k", "strongreject_score", "no_answer_rate"):
                s = bench["metrics"].get(metric)
                if s and s["value"] is not None:
                    parts.append(f"{metric.removesuffix('_rate')} {s['value'] * 100:.1f} "
                                 f"[{s['ci_low'] * 100:.1f}, {s['ci_high'] * 100:.1f}]")
            row.append("; ".join(parts) + f" (n={bench['prompts']}×{bench['sampling']['n']})")
        detail_rows.append(row)
    return headers, rows, detail_headers, detail_rows


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _notes(methods: list[Method], base: Method | None, suite: str) -> list[str]:
    first = methods[0].results
    return [
        f"Suite `{suite}`; rates in % with approximate 95% intervals. " + first.get("confidence_intervals", ""),
        "Aggregates are means over the suite's benchmarks of a kind (harmful: refusal / guard harmful rate; "
        "benign: over-refusal = refusal rate, answered = a final answer that is not a refusal, so a broken "
        "response counts against 'answered' but not as a refusal; reasoning: pass@1 accuracy); with one "
        "benchmark the interval "
        "is its own, with several the benchmarks' margins combined as independent errors (approximate).",
        (f"Safety tax: difference to the base model `{base.label}` in percentage points (negative Δ reasoning = "
         "reasoning lost), with an approximate 95% interval: the two runs' margins combined as independent "
         "errors." if base else "No base model among the runs: no safety tax (pass an eval-only run "
         "directory of the base model, or --base)."),
        "Safety score (plots) = 1 - guard harmful rate where a guard judged, else refusal rate on harmful prompts.",
        "Device-hours = devices held x wall time. FLOPs are an estimate: 6·N·tokens trained + 2·N·tokens "
        "generated / prefilled / forward-only (N = parameters); see each run's cost.json. Costs are measured "
        "once, not sampled: they carry no interval.",
        "Per benchmark: safe_at_k / cons_safe_at_k are SafeChain's Safe@K (all k samples of a prompt judged "
        "safe) and ConsSafe@K (more than half); guard_refusal is WildGuard's refusal verdict; harmful is the "
        "benchmark's judge (guard or moderation model: results.json names it).",
    ]


def plot(methods: list[Method], base: Method | None, out: Path, cost_key: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths = []

    # Safety against reasoning, and against over-refusal: a method that refuses everything is
    # "safe" on the first panel alone.
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    panels = (("reasoning", "reasoning: pass@1 accuracy (%) →", "Safety vs reasoning (up and right is better)"),
              ("over_refusal", "← over-refusal on benign prompts (%)", "Safety vs over-refusal (up and left is better)"))
    for ax, (key, xlabel, title) in zip(axes, panels):
        shown = [m for m in methods if m.metrics[key].value is not None and m.safety_score.value is not None]
        for m in shown:
            x, y = m.metrics[key], m.safety_score
            ax.errorbar(x.value * 100, y.value * 100, xerr=x.error_bar(), yerr=y.error_bar(),
                        fmt="*" if m is base else "o", markersize=14 if m is base else 8, capsize=3, alpha=0.85,
                        color=colors[methods.index(m) % len(colors)], label=f"{m.label} ({m.kind})")
        _percent_axis(ax.set_xlim, [m.metrics[key] for m in shown])
        _percent_axis(ax.set_ylim, [m.safety_score for m in shown])
        _labels(ax, [(m.label, m.metrics[key].value * 100, m.safety_score.value * 100) for m in shown])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("safety score (%) →")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    paths.append(out / "safety_vs_reasoning.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    unit = "device-hours" if cost_key == "device_hours" else "FLOPs (estimate)"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, (title, getter) in zip(axes, (("safety score (%)", lambda m: m.safety_score),
                                          ("reasoning pass@1 (%)", lambda m: m.metrics["reasoning"]))):
        points: list[tuple[float, float]] = []
        labels = []
        for i, m in enumerate(methods):
            q = getter(m)
            if q.value is None:
                continue
            c = m.training(cost_key)
            points.append((c, q.value * 100))
            labels.append((m.label, c, q.value * 100))
            ax.errorbar(c, q.value * 100, yerr=q.error_bar(), fmt="*" if m is base else "o", alpha=0.85,
                        markersize=14 if m is base else 8, capsize=3, color=colors[i % len(colors)],
                        label=f"{m.label} ({m.kind})")
        front = pareto_front(points)
        if front:  # a step line through the frontier, flat to the most expensive run
            xs = [points[i][0] for i in front] + [max(c for c, _ in points)]
            ys = [points[i][1] for i in front] + [points[front[-1]][1]]
            ax.step(xs, ys, where="post", color="gray", linestyle="--", linewidth=1, label="Pareto frontier")
        _percent_axis(ax.set_ylim, [getter(m) for m in methods])
        _labels(ax, labels)
        ax.set_xlabel(f"training cost: {unit} →")
        ax.set_ylabel(title + " →")
        ax.set_title(f"{title.split(' (')[0]} vs training cost")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Quality vs cost (up and left is better; dashed: Pareto frontier)")
    fig.tight_layout()
    paths.append(out / "quality_vs_cost.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def _percent_axis(set_limits, aggregates: list[Aggregate]) -> None:
    """Zoom on the points and their intervals (at least 20 points wide), inside [0, 100] %."""
    shown = [a for a in aggregates if a.value is not None]
    if not shown:
        return
    low, high = min(a.low for a in shown) * 100, max(a.high for a in shown) * 100
    pad = max(4.0, (20 - (high - low)) / 2, 0.1 * (high - low))
    low, high = max(-2.0, low - pad), min(102.0, high + pad)
    set_limits(low, max(high, low + 20) if low == -2.0 else high)


def _labels(ax, points: list[tuple[str, float, float]]) -> None:
    """Annotate points (text, x, y) after the axis limits are set: a label that would overlap an
    earlier one (in screen space) moves down a line, so close points stay readable."""
    ax.figure.canvas.draw()  # the transform below needs the final limits and layout
    taken: list[tuple[float, float, float]] = []  # x, y (pixels) and width of placed labels
    for text, x, y in sorted(points, key=lambda p: (-p[2], p[1])):
        px, py = ax.transData.transform((x, y))
        width = 7.0 * len(text)
        offset = 6 if py + 20 < ax.get_window_extent().y1 else -16  # below a point at the top edge
        while any(abs(px - tx) < (width + tw) / 2 + 8 and abs(py + offset - ty) < 12 for tx, ty, tw in taken):
            offset -= 13
        taken.append((px, py + offset, width))
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(8, offset), fontsize=8, annotation_clip=False)


def compare(run_dirs: list[Path], out: Path, *, suite: str | None = None, base_label: str | None = None,
            cost_key: str = "device_hours") -> dict[str, Path]:
    if len(run_dirs) < 2:
        raise CompareError("compare needs two or more run directories")
    methods = [load_method(Path(d), suite) for d in run_dirs]
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):  # same directory names under different parents
        for m in methods:
            m.label = f"{m.run_dir.parent.name}/{m.run_dir.name}"
    suites = {m.results["suite"] for m in methods}
    if len(suites) != 1:
        raise CompareError(f"runs were evaluated on different suites {sorted(suites)}: pass --suite")
    suite_name = suites.pop()
    if base_label is not None:
        base = next((m for m in methods if m.label == base_label or str(m.run_dir) == base_label), None)
        if base is None:
            raise CompareError(f"--base {base_label!r} is none of {[m.label for m in methods]}")
    else:
        bases = [m for m in methods if m.kind == "base"]
        base = bases[0] if len(bases) == 1 else None
    out.mkdir(parents=True, exist_ok=True)
    headers, rows, detail_headers, detail_rows = tables(methods, base)
    notes = _notes(methods, base, suite_name)
    pngs = plot(methods, base, out, cost_key)
    md = ["# Safety, over-refusal, reasoning and cost", "", _markdown_table(headers, rows), "",
          "## Per benchmark (%, [95% CI], n = prompts × samples)", "", _markdown_table(detail_headers, detail_rows),
          "", *[f"- {n}" for n in notes], "", *[f"![{p.stem}]({p.name})" for p in pngs], ""]
    (out / "comparison.md").write_text("\n".join(md))
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th{text-align:left}"
             "th{background:#f3f3f3}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>rl-safety comparison</title>"
            f"<style>{style}</style></head><body><h1>Safety, over-refusal, reasoning and cost</h1>"
            + _html_table(headers, rows) + "<h2>Per benchmark (%, [95% CI], n = prompts × samples)</h2>"
            + _html_table(detail_headers, detail_rows)
            + "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
            + "".join(f"<p><img src='{p.name}' alt='{p.stem}'></p>" for p in pngs) + "</body></html>")
    (out / "comparison.html").write_text(page)
    numbers = {m.label: {"run_dir": str(m.run_dir), "kind": m.kind, "base": m is base,
                         **{k: {"value": a.value, "ci_low": a.low, "ci_high": a.high} for k, a in m.metrics.items()},
                         "safety_score": m.safety_score.value,
                         "training_device_hours": m.training("device_hours"),
                         "training_flops_estimate": m.training("flops")} for m in methods}
    (out / "comparison.json").write_text(json.dumps({"suite": suite_name, "methods": numbers}, indent=1) + "\n")
    return {"markdown": out / "comparison.md", "html": out / "comparison.html", "json": out / "comparison.json",
            **{p.stem: p for p in pngs}}


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="rl-safety compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories with eval/SUITE/results.json")
    parser.add_argument("--output", type=Path, default=Path("comparison"))
    parser.add_argument("--suite", default=None, help="which suite's results (when runs have several)")
    parser.add_argument("--base", default=None, help="label (directory name) of the base model's run")
    parser.add_argument("--cost", choices=["device_hours", "flops"], default="device_hours",
                        help="x axis of the quality-vs-cost plot")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.output.is_dir():
        raise CompareError(f"--output {args.output} is a file; it must be a directory for the report")
    written = compare(args.run_dirs, args.output, suite=args.suite, base_label=args.base, cost_key=args.cost)
    print_report(written)
    return 0


def print_report(written: dict[str, Path]) -> None:
    """The main table of a written comparison (`compare`'s return value), then where each file is."""
    print(written["markdown"].read_text().split("\n## ")[0])
    for name, path in written.items():
        print(f"{name}: {path}")
