"""`ganray report` and `ganray runs` on run folders built by hand in the brief's format."""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganray import report, runs
from ganray.config import debug
from ganray.svgplot import Series, line_chart, nice_ticks, sparkline

BASE = ["step", "kimg", "loss_d", "loss_g", "d_real", "d_fake", "img_per_s", "data_wait_frac", "wall_s"]


def _grid(step: int, n: int = 8, size: int = 16, seed: int = 0) -> np.ndarray:
    """An n x n grid of blobs that sharpen with step: distinct PNG bytes per step."""
    rng = np.random.default_rng(seed * 100_000 + step)
    yy, xx = np.mgrid[:size, :size]
    tiles = []
    for _ in range(n * n):
        cy, cx = rng.uniform(4, size - 4, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 10.0)
        noise = rng.normal(0, 1.0 / (1 + step / 20), (size, size))
        tiles.append(np.clip((blob + 0.3 * noise) * 255, 0, 255).astype(np.uint8))
    rows = [np.concatenate(tiles[r * n:(r + 1) * n], axis=1) for r in range(n)]
    return np.concatenate(rows, axis=0)[:, :, None]


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def make_run(path: Path, *, reports: int = 12, fid_every: int = 3, summary: bool = True,
             lr_g: float = 2e-4, fid_scale: float = 1.0, seed: int = 0) -> dict:
    """A run folder as the training loop writes it; returns what was written, for assertions."""
    cfg = debug()
    cfg.run.name = path.name
    cfg.optim.lr_g = lr_g
    (path / "samples").mkdir(parents=True)
    (path / "config.yaml").write_text(cfg.to_yaml())
    columns = BASE + ["fid", "grad_norm_g", "grad_norm_d", "lr_g", "lr_d", "nan_skips", "rollbacks"]
    lines, fids = [",".join(columns)], {}
    for i in range(1, reports + 1):
        step = 4 * i
        fid = fid_scale * (200.0 / i + 5.0 * (i >= reports - 1)) if i % fid_every == 0 else None
        if fid is not None:
            fids[step] = fid
        row = [step, step * 0.016, 1.4 - 0.05 * i, 0.7 + 0.08 * i, 0.1 * i, -0.05 * i, 900 + 10 * i, 0.04,
               2.5 * i, fid, 1.0 / i, 3.0 / i, lr_g, 2e-4, 0, 0]
        lines.append(",".join("" if v is None else f"{v:.6g}" for v in row))
        (path / "samples" / f"grid_{step:08d}.png").write_bytes(_png(_grid(step, seed=seed)))
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    (path / "samples" / "latest.png").write_bytes((path / "samples" / f"grid_{4 * reports:08d}.png").read_bytes())
    best_step = min(fids, key=fids.get) if fids else None
    if summary:
        (path / "summary.json").write_text(json.dumps({
            "name": path.name, "data": "digits", "status": "stopped", "stop_reason": "max_minutes",
            "steps": 4 * reports, "kimg": 4 * reports * 0.016, "wall_s": 65.0, "img_per_s": 1000.0,
            "best_fid": fids[best_step] if fids else None, "best_checkpoint": f"{path}/checkpoint_best",
            "final_checkpoint": f"{path}/checkpoint_final"}))
    return {"fids": fids, "best_step": best_step, "last_step": 4 * reports}


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.urls, self.h2, self._in_h2 = [], [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        self.urls += [v for k, v in attrs if k in ("src", "href", "xlink:href", "action") and v]
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data.strip())
            self._in_h2 = False


def _parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    return p


def _decode(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,"), src[:40]
    return base64.b64decode(src.split(",", 1)[1])


def test_run_report_has_sections_curves_and_inline_images(tmp_path):
    run = tmp_path / "r1"
    info = make_run(run)
    html = report.build_report(str(run))
    page = _parse(html)
    for section in ("Samples (fixed noise)", "Progress", "Quality", "Training dynamics", "Throughput",
                    "Summary", "Config"):
        assert section in page.h2, section
    assert page.imgs and all(u.startswith("data:") for u in page.urls)
    assert not re.search(r"https?://", html), "the page must not reference the network"
    for img in page.imgs:
        decoded = Image.open(io.BytesIO(_decode(img["src"])))
        assert decoded.size == (128, 128)  # 8 x 8 tiles of 16 px
    latest, best = page.imgs[0], page.imgs[1]
    assert _decode(latest["src"]) == (run / "samples" / "latest.png").read_bytes()
    assert _decode(best["src"]) == (run / "samples" / f"grid_{info['best_step']:08d}.png").read_bytes()
    assert len(page.imgs) == 2 + report.PROGRESS_GRIDS
    best_fid = min(info["fids"].values())
    assert f"best FID {best_fid:.2f}" in html and "max_minutes" in html
    assert html.count("<svg") >= 6  # FID, losses, D outputs, grad norms, lr, img/s, data wait ...
    assert "<tr><td>beta1</td><td>0.5</td></tr>" in html  # the default: plain
    assert '<tr><td>latent_dim</td><td class="d">16</td></tr>' in html  # debug preset's: bold


def test_run_without_summary_is_running_then_incomplete(tmp_path):
    run = tmp_path / "live"
    make_run(run, summary=False, fid_every=100)
    assert runs.read_run(str(run)).status == "running"
    old = time.time() - 2 * runs.RUNNING_WINDOW_S
    os.utime(run / "metrics.csv", (old, old))
    record = runs.read_run(str(run))
    assert record.status == "incomplete" and record.best_fid() is None
    assert record.kimg == pytest.approx(12 * 4 * 0.016) and record.wall_s == pytest.approx(30.0)
    html = report.build_report(str(run))
    assert "no summary.json yet" in html and "incomplete" in html and "Quality" not in html


def _experiment(tmp_path: Path, nested: bool = True) -> tuple[Path, list[tuple[str, float]]]:
    """`ganray tune`'s layout: trial run folders under runs/ (no summary.json of their own),
    results.csv with the stopper's reasons, and the experiment's summary.json."""
    exp = tmp_path / "out" / "search1"
    trials = [("trial_a", 3e-4, 1.5, "asha"), ("trial_b", 1e-4, 0.7, "completed"), ("trial_c", 2e-4, 1.1, "error")]
    lines = ["trial_id,optim.lr_g,best_fid,kimg,stop_reason,run_dir"]
    for i, (name, lr, scale, reason) in enumerate(trials):
        folder = exp / "runs" / name if nested else exp / name
        make_run(folder, lr_g=lr, fid_scale=scale, seed=i, summary=not nested)
        lines.append(f"{name},{lr},{scale},0.768,{reason},{folder}")
    (exp / "results.csv").write_text("\n".join(lines) + "\n")
    (exp / "best_config.yaml").write_text("optim:\n  lr_g: 0.0001\n")
    (exp / "summary.json").write_text(json.dumps({"trials": 3, "best_fid": 15.17, "best_trial": "trial_b"}))
    return exp, [(n, s) for n, _, s, _ in trials]


def test_experiment_report_ranks_trials_by_best_fid(tmp_path):
    exp, trials = _experiment(tmp_path)
    html = report.build_report(str(exp))
    order = [m.group(1) for m in re.finditer(r"</span>(trial_\w)</td>", html)]
    assert order == [n for n, _ in sorted(trials, key=lambda t: t[1])]
    assert "<th>optim.lr_g</th>" in html and "<th>model.g_width</th>" not in html
    assert "Best trial: trial_b" in html and "best_config.yaml" in html and "best_trial" in html
    statuses = re.findall(r'</span>(trial_\w)</td>.*?class="badge \w*">(\w+)</span> (\w+)</td>', html)
    assert statuses == [("trial_b", "finished", "completed"), ("trial_c", "failed", "error"),
                        ("trial_a", "stopped", "asha")]
    page = _parse(html)
    assert len(page.imgs) == 1 + len(trials)  # best trial's grid + one thumbnail per trial
    assert html.count('class="spark"') == len(trials)
    assert not re.search(r"https?://", html)
    # While the trials run there is no results.csv yet; Tune's experiment state marks the folder.
    (exp / "results.csv").unlink()
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    html = report.build_report(str(exp))
    assert html.count('class="badge run">running</span>') == len(trials)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ganray")
    sub = parser.add_subparsers()
    report.add_parser(sub)
    report.add_runs_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_runs_table_lists_runs_and_trials(tmp_path, capsys):
    _experiment(tmp_path, nested=False)  # trial folders right below the experiment, each with summary.json
    make_run(tmp_path / "out" / "solo", summary=False, fid_every=100)
    (tmp_path / "out" / "not_a_run").mkdir()
    assert _cli(["runs", str(tmp_path / "out"), "--sort", "fid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DATA", "KIMG", "BEST", "FID", "WALL", "STATUS"]
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["search1/trial_b", "search1/trial_c", "search1/trial_a", "solo"]
    cells = lines[1].split()
    assert cells[1:4] == ["digits", "0.768", f"{(200 / 12 + 5) * 0.7:.2f}"]
    assert cells[4:] == ["1m05s", "stopped", "(max_minutes)"]
    assert lines[-1].split()[1:] == ["digits", "0.768", "-", "30s", "running"]
    assert runs.find_runs(str(tmp_path)) == []  # one level too high: no experiment row posing as a run


def test_cli_writes_report_and_rejects_bad_folders(tmp_path, capsys):
    run = tmp_path / "r1"
    make_run(run)
    assert _cli(["report", str(run)]) == 0
    assert (run / "report.html").stat().st_size > 10_000
    out = tmp_path / "pages" / "x.html"
    assert _cli(["report", run.as_uri(), "--html", str(out)]) == 0  # URIs read through pyarrow
    assert out.read_text().startswith("<!DOCTYPE html>")
    capsys.readouterr()
    assert _cli(["report", str(tmp_path / "missing")]) == 2
    assert "missing' is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _cli(["report", str(tmp_path / "empty")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    (run / "metrics.csv").write_text("kimg,loss_d\n1,2\n")
    assert _cli(["runs", str(tmp_path)]) == 2
    assert "metrics.csv: no 'step' column" in capsys.readouterr().err


def test_svg_charts():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(13.0, 87.0, 4) == [20.0, 40.0, 60.0, 80.0]
    nan = math.nan
    svg = line_chart([Series("fid", [1, 2, 3, 4, 5], [50, 30, nan, 20, 25], points=True)],
                     title="FID", mark_min="fid")
    assert svg.count("<polyline") == 2, "a NaN row breaks the line"
    assert "best 20 @ 4" in svg and svg.count("<title>") == 4
    assert "no data" in line_chart([Series("x", [1], [nan])], title="empty")
    assert "<polyline" in sparkline([0, 1, 2], [3, 1, 2]) and "<polyline" not in sparkline([], [])


# --- a real browser: Debian's chromium (apt-get install -y chromium); skipped without it ---

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
# After load, the probe writes each image's decoded size into the DOM that --dump-dom prints.
_PROBE = ("<script>addEventListener('load',()=>document.querySelectorAll('img').forEach("
          "i=>i.setAttribute('data-natural',i.naturalWidth+'x'+i.naturalHeight)))</script>")


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--hide-scrollbars",
           '--host-resolver-rules=MAP * ~NOTFOUND', *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page asked the network stack for.

    Chromium's own background traffic (updates, sign-in) has initiator 'not an origin'; requests
    made by a file:// page carry its opaque origin ('null').
    """
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"]
            if e["type"] == start_job and "url" in e.get("params", {})
            and e["params"].get("initiator") != "not an origin"]


@needs_chromium
def test_report_renders_in_chromium_without_network(tmp_path):
    run = tmp_path / "r1"
    make_run(run)
    page = tmp_path / "probe.html"
    page.write_text(report.build_report(str(run)).replace("</body>", _PROBE + "</body>"))
    control = tmp_path / "control.html"  # proves the net-log check sees a request when there is one
    control.write_text(f'<img src="http://example.invalid/x.png">{_PROBE}')

    net_log = tmp_path / "net.json"
    dom = _chromium(tmp_path, page.as_uri(), f"--log-net-log={net_log}", "--dump-dom").stdout
    sizes = re.findall(r'data-natural="(\d+)x(\d+)"', dom)
    assert len(sizes) == 2 + report.PROGRESS_GRIDS
    assert all(int(w) > 0 and int(h) > 0 for w, h in sizes), sizes
    assert dom.count("<svg") >= 6
    assert _page_requests(net_log) == []

    control_log = tmp_path / "control.json"
    _chromium(tmp_path, control.as_uri(), f"--log-net-log={control_log}", "--dump-dom")
    assert _page_requests(control_log) == ["http://example.invalid/x.png"]

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=1280,1600")
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1280)
    assert pixels[:, :640].std() > 20, "the screenshot is blank"


def test_failed_run_shows_the_error_escaped(tmp_path):
    run = tmp_path / "odd"
    make_run(run, fid_every=100)
    summary = json.loads((run / "summary.json").read_text())
    summary.update(status="failed", stop_reason="error", error="RuntimeError: loss is <nan> & D exploded",
                   data="<folder>")
    (run / "summary.json").write_text(json.dumps(summary))
    html = report.build_report(str(run))
    assert "RuntimeError: loss is &lt;nan&gt; &amp; D exploded" in html and "<nan>" not in html
    assert "data: &lt;folder&gt;" in html and 'class="badge bad">failed<' in html
    assert "Error" in _parse(html).h2 and "no eval" in html
