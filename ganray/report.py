"""`ganray report RUN_DIR`: one self-contained HTML page for a run or a Tune experiment.

Everything is inline: sample grids as data: URIs of the PNGs in the run folder, curves as SVG
drawn from metrics.csv (svgplot.py), CSS in a <style> block, no script.  The page makes no
network request, so it can be mailed, attached to an issue or opened on an air-gapped box.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from html import escape
from typing import Any

import yaml

from ganray import runs
from ganray.report_html import badge, card, figure, fmt, img_tag, page, table
from ganray.runs import RunReadError, RunRecord, Store, format_duration, format_kimg
from ganray.svgplot import PALETTE, Series, line_chart, sparkline

# (section, [(chart title, metrics.csv columns, log y)]): charts whose columns are all absent
# are left out; numeric columns no chart names get one chart each under "Other".
CHART_GROUPS: list[tuple[str, list[tuple[str, list[str], bool]]]] = [
    ("Quality", [("FID", ["fid"], False), ("KID", ["kid"], False), ("Inception score", ["is"], False),
                 ("Precision / recall", ["precision", "recall"], False),
                 ("Mode entropy", ["mode_entropy"], False)]),
    ("Training dynamics", [("Losses", ["loss_d", "loss_g"], False),
                           ("D(real) / D(fake)", ["d_real", "d_fake"], False),
                           ("Gradient norms", ["grad_norm_g", "grad_norm_d"], True),
                           ("Learning rates", ["lr_g", "lr_d"], False),
                           ("Augmentation (ADA)", ["ada_p", "r_t"], False),
                           ("NaN guard", ["nan_skips", "rollbacks"], False)]),
    ("Throughput", [("Images per second", ["img_per_s"], False),
                    ("Data wait (fraction of step time)", ["data_wait_frac"], False),
                    ("Evaluation time (s)", ["eval_s"], False)]),
]
_NOT_CHARTED = {"step", "kimg", "wall_s", "kid_std"}
# Measured only on eval reports: points joined across the rows between evaluations.
_EVAL_COLUMNS = {"fid", "kid", "is", "precision", "recall", "mode_entropy", "eval_s"}
# Rates, fractions and counters are read against zero; losses and logits against their range.
_FROM_ZERO = {"img_per_s", "data_wait_frac", "eval_s", "nan_skips", "rollbacks", "ada_p"}
PROGRESS_GRIDS = 8



# --- one run ---


def _x_axis(record: RunRecord) -> tuple[list[float], str]:
    if any(math.isfinite(v) for v in record.metrics.get("kimg", [])):
        return record.metrics["kimg"], "kimg"
    return record.metrics.get("step", []), "step"


def _charts(record: RunRecord) -> str:
    xs, x_label = _x_axis(record)
    present = {c for c, v in record.metrics.items() if any(math.isfinite(x) for x in v)}
    named = {c for _, charts in CHART_GROUPS for _, cols, _ in charts for c in cols}
    groups = CHART_GROUPS + [("Other", [(c, [c], False) for c in record.metrics
                                        if c in present and c not in named | _NOT_CHARTED])]
    html = []
    for section, charts in groups:
        svgs = []
        for title, cols, log_y in charts:
            cols = [c for c in cols if c in present]
            if not cols:
                continue
            series = [Series(c, xs, record.metrics[c], points=c in _EVAL_COLUMNS, connect=c in _EVAL_COLUMNS)
                      for c in cols]
            wide = cols == ["fid"]  # the number a GAN run is judged by gets the room
            svgs.append(line_chart(series, title=title, x_label=x_label, log_y=log_y,
                                   width=796 if wide else 392, height=300 if wide else 240,
                                   mark_min="fid" if wide else None, include_zero=bool(_FROM_ZERO & set(cols))))
        if svgs:
            html.append(f'<h2>{escape(section)}</h2><div class="charts">{"".join(svgs)}</div>')
    return "".join(html)


def _kimg_at(record: RunRecord, step: int) -> float | None:
    steps = record.metrics.get("step", [])
    for s, k in zip(steps, record.metrics.get("kimg", [])):
        if int(s) == step and math.isfinite(k):
            return k
    return None


def _grid_caption(record: RunRecord, what: str, step: int) -> str:
    kimg = _kimg_at(record, step)
    return f"{what}: step {step}" + (f", {format_kimg(kimg)} kimg" if kimg is not None else "")


def _samples(record: RunRecord, store: Store) -> str:
    if not record.grids:
        latest = store.read_bytes("samples/latest.png")
        return "<h2>Samples</h2>" + (figure(latest, "latest") if latest else '<p class="sub">no sample grids</p>')
    last = record.grids[-1]
    figures = [figure(store.read_bytes("samples/latest.png") or store.read_bytes(f"samples/grid_{last:08d}.png"),
                       _grid_caption(record, "latest", last))]
    best = record.best_fid()
    if best is not None and best[2] is not None:
        step = record.grid_near(best[2])
        figures.append(figure(store.read_bytes(f"samples/grid_{step:08d}.png"),
                               _grid_caption(record, f"best FID {best[0]:.2f}", step)))
    picks = _spread(record.grids, PROGRESS_GRIDS)
    strip = "".join(figure(store.read_bytes(f"samples/grid_{s:08d}.png"), _grid_caption(record, "", s)[2:], 124)
                    for s in picks)
    return (f'<h2>Samples (fixed noise)</h2><div class="grids">{"".join(figures)}</div>'
            f'<h2>Progress</h2><div class="strip">{strip}</div>')


def _spread(values: list[int], n: int) -> list[int]:
    """n values evenly spread over a sorted list, first and last included."""
    if len(values) <= n:
        return values
    return sorted({values[round(i * (len(values) - 1) / (n - 1))] for i in range(n)})


def _cards(record: RunRecord) -> str:
    best = record.best_fid()
    wait = record.last("data_wait_frac")
    if best:
        cards = [card("best FID", f"{best[0]:.2f}", highlight=True), card("at kimg", format_kimg(best[1]))]
    else:
        cards = [card("best FID", "no eval")]
    cards += [
        card("kimg", format_kimg(record.kimg)),
        card("steps", fmt(record.steps, "d")),
        card("wall time", format_duration(record.wall_s)),
        card("img/s", fmt(record.img_per_s, ".0f")),
        card("data wait", f"{wait:.0%}" if wait is not None else "-"),
    ]
    for column, label in (("nan_skips", "NaN skips"), ("rollbacks", "rollbacks")):
        if record.last(column):
            cards.append(card(label, fmt(record.last(column), ".0f")))
    return f'<div class="cards">{"".join(cards)}</div>'


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def _defaults() -> dict[str, Any]:
    try:
        from ganray.config import Config

        return _flatten(Config().to_dict())
    except Exception:  # noqa: BLE001 - the page must render even if the config model changed
        return {}


def _config_html(config: dict[str, Any] | None) -> str:
    if not config:
        return '<h2>Config</h2><p class="sub">no config.yaml</p>'
    defaults = _defaults()
    tables = []
    for section, body in config.items():
        if not isinstance(body, dict):
            continue
        rows = []
        for key, value in _flatten(body).items():
            changed = defaults and defaults.get(f"{section}.{key}", object()) != value
            cls = ' class="d"' if changed else ""
            rows.append(f"<tr><td>{escape(key)}</td><td{cls}>{escape(fmt(value, 'g'))}</td></tr>")
        tables.append(f"<table><tr><th colspan=2>{escape(str(section))}</th></tr>{''.join(rows)}</table>")
    note = ' <span class="sub">(bold: differs from the default)</span>' if defaults else ""
    return f'<h2>Config{note}</h2><div class="cfg">{"".join(tables)}</div>'


def _summary_html(record: RunRecord) -> str:
    if not record.summary:
        return '<h2>Summary</h2><p class="sub">no summary.json yet: the run is going on or ended abruptly</p>'
    rows = [[escape(str(k)), escape(fmt(v, ".6g") if not isinstance(v, (list, dict)) else yaml.safe_dump(v).strip())]
            for k, v in record.summary.items() if k != "error"]
    error = record.summary.get("error")
    err = f"<h2>Error</h2><pre>{escape(str(error))}</pre>" if error else ""
    return f"{err}<h2>Summary</h2>{table(['key', 'value'], rows)}"


def run_report(path: str) -> str:
    record = runs.read_run(path)
    store = Store(path)
    stop = record.stop_reason
    header = (f"<header><h1>{escape(record.name)}</h1>{badge(record.status)}"
              + (f'<span class="sub">stop reason: <b>{escape(str(stop))}</b></span>' if stop else "")
              + f'<span class="sub">data: {escape(str(record.data or "-"))}</span></header>')
    body = header + _cards(record) + _samples(record, store) + _charts(record)
    body += _summary_html(record) + _config_html(record.config)
    return page(f"ganray: {record.name}", body, record.path)


# --- a Tune experiment ---


def _varied(trials: list[RunRecord]) -> list[str]:
    """Config keys whose values differ between trials: the searched hyperparameters."""
    flat = [_flatten(t.config or {}) for t in trials]
    keys = sorted({k for f in flat for k in f} - {"run.name", "run.out"})
    return [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def experiment_report(path: str) -> str:
    store = Store(path)
    trials = runs.read_trials(path)
    if not trials:
        raise RunReadError(f"{path!r} has no trial run folders")
    ranked = runs.sort_records(trials, "fid")
    metric = "fid" if any(t.best_fid() for t in trials) else "loss_g"
    # The first trials get the palette, the tail grey; the table's swatches are the legend.
    colors = {t.name: PALETTE[i] if i < len(PALETTE) else "#c0c4ca" for i, t in enumerate(ranked)}
    # Drawn worst first so the best trial's line ends up on top.
    overlay = line_chart([Series(t.name, _x_axis(t)[0], t.metrics.get(metric, []), color=colors[t.name],
                                 points=metric == "fid", connect=metric == "fid",
                                 stroke_width=3.0 if t is ranked[0] else 1.6)
                          for t in reversed(ranked)], title=f"{'FID' if metric == 'fid' else metric} of every trial",
                         width=1190, height=340, legend=False)
    keys = _varied(trials)
    statuses: dict[str, int] = {}
    for t in trials:
        statuses[t.status] = statuses.get(t.status, 0) + 1
    name = store.path.rsplit("/", 1)[-1]
    body = (f"<header><h1>{escape(name)}</h1><span class=\"sub\">Tune experiment, {len(trials)} trials: "
            + ", ".join(f"{n} {escape(s)}" for s, n in sorted(statuses.items())) + "</span></header>"
            + _best_trial(ranked[0], keys) + f'<h2>Curves</h2><div class="charts">{overlay}</div>'
            + f"<h2>Trials (sorted by best FID)</h2>{_trials_table(ranked, keys, metric, colors)}"
            + _experiment_files(store))
    return page(f"ganray: {name}", body, store.path)


def _trials_table(ranked: list[RunRecord], keys: list[str], metric: str, colors: dict[str, str]) -> str:
    rows, classes = [], []
    for i, t in enumerate(ranked):
        best = t.best_fid()
        last = t.grids[-1] if t.grids else None
        thumb = img_tag(Store(t.path).read_bytes(f"samples/grid_{last:08d}.png"), "latest", 96) if last else ""
        flat = _flatten(t.config or {})
        stop = f" {escape(str(t.stop_reason))}" if t.stop_reason else ""
        rows.append([str(i + 1), f'<span class="sw" style="background:{colors[t.name]}"></span>{escape(t.name)}',
                     fmt(best[0] if best else None, ".2f"), format_kimg(best[1] if best else None),
                     format_kimg(t.kimg), badge(t.status) + stop]
                    + [escape(fmt(flat.get(k), "g")) for k in keys]
                    + [sparkline(_x_axis(t)[0], t.metrics.get(metric, []), color=colors[t.name]), thumb])
        classes.append("best" if i == 0 and best else "")
    header = ["#", "trial", "best FID", "at kimg", "kimg", "status", *map(escape, keys),
              f"{escape(metric)} curve", "latest samples"]
    return table(header, rows, numeric={0, 2, 3, 4}, row_classes=classes)


def _best_trial(best: RunRecord, keys: list[str]) -> str:
    """The winner's samples at its best FID next to its numbers and searched values."""
    if not best.best_fid():
        return ""
    fid, kimg, step = best.best_fid()
    grid = best.grid_near(step)
    data = Store(best.path).read_bytes(f"samples/grid_{grid:08d}.png") if grid is not None else None
    flat = _flatten(best.config or {})
    params = [[escape(k), escape(fmt(flat.get(k), "g"))] for k in keys]
    cards = "".join([card("best FID", f"{fid:.2f}", True), card("at kimg", format_kimg(kimg)),
                     card("kimg", format_kimg(best.kimg)), card("wall time", format_duration(best.wall_s))])
    caption = _grid_caption(best, "samples at best FID", grid) if grid is not None else "no samples"
    return (f"<h2>Best trial: {escape(best.name)}</h2><div class=\"grids\">{figure(data, caption)}"
            f'<div><div class="cards">{cards}</div><br>{table(["searched", "value"], params)}</div></div>')


def _experiment_files(store: Store) -> str:
    html = ""
    summary = store.read_text("summary.json")
    if summary:
        try:
            items = json.loads(summary).items()
        except (json.JSONDecodeError, AttributeError):
            raise RunReadError(f"{store.path}/summary.json is not a JSON object") from None
        html += "<h2>Summary</h2>" + table(["key", "value"], [[escape(str(k)), escape(fmt(v, ".6g"))] for k, v in items])
    trials_png = store.read_bytes("trials.png")
    if trials_png:
        html += f'<h2>trials.png</h2><div class="grids">{figure(trials_png, "trials.png", 900)}</div>'
    best_config = store.read_text("best_config.yaml")
    if best_config:
        html += f"<h2>best_config.yaml</h2><pre>{escape(best_config)}</pre>"
    return html


# --- `ganray report` (and `ganray runs`, whose code lives in runs.py) ---


def build_report(path: str) -> str:
    store = Store(path)
    if not store.is_dir():
        raise RunReadError(f"{path!r} is not a folder")
    return experiment_report(path) if runs.is_experiment(store) else run_report(path)


def write_report(path: str, html_file: str | None = None) -> str:
    html = build_report(path).encode("utf-8")
    target = html_file or f"{path.rstrip('/')}/report.html"
    parent, _, name = target.rstrip("/").rpartition("/")
    out = Store(parent or ".")
    out.fs.create_dir(out.root, recursive=True)
    with out.fs.open_output_stream(f"{out.root}/{name}") as f:
        f.write(html)
    return target


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="self-contained HTML report of a run or Tune experiment",
                              description="Write one HTML page (inline images and charts, no network) "
                                          "for a run folder or a Tune experiment folder.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder or experiment folder (path or URI)")
    p.add_argument("--html", metavar="FILE", help="output file (default: RUN_DIR/report.html)")
    p.set_defaults(func=_report_command)
    return p


def _report_command(args: argparse.Namespace) -> int:
    try:
        target = write_report(args.run_dir, args.html)
    except (RunReadError, OSError) as e:
        print(f"ganray: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    return 0


add_runs_parser = runs.add_parser
