"""`ganray evaluator fit` and `ganray eval` (--samples and --checkpoint), through their parsers."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from ganray.metrics import eval_cli, evaluator_cli

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ganray")
    sub = parser.add_subparsers(dest="command")
    eval_cli.add_parser(sub)
    evaluator_cli.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def data_npz(tmp_path_factory):
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("MNIST test set not found")
    with gzip.open(MNIST_DIR / "t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:600]
    with gzip.open(MNIST_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:600]
    path = tmp_path_factory.mktemp("data") / "mnist600.npz"
    np.savez(path, x=x, y=y.astype(np.int64))
    return path


@pytest.fixture(scope="module")
def classifier16(data_npz, tmp_path_factory):
    out = tmp_path_factory.mktemp("clf") / "clf16.safetensors"
    code = main(["evaluator", "fit", "--data", str(data_npz), "--out", str(out), "--epochs", "1",
                 "--resolution", "16", "--heldout", "100"])
    assert code == 0 and out.is_file()
    return out


def test_evaluator_fit_writes_a_classifier_with_metadata(classifier16, data_npz, capsys):
    from ganray.metrics.classifier import load_classifier

    _, meta, _ = load_classifier(classifier16)
    assert (meta.resolution, meta.channels, meta.num_classes, meta.heldout_images) == (16, 1, 10, 100)
    assert meta.accuracy > 0.1 and meta.epochs == 1


def test_evaluator_fit_rejects_unlabelled_data(tmp_path, capsys):
    path = tmp_path / "unlabelled.npz"
    np.savez(path, x=np.zeros((20, 16, 16), np.uint8))
    assert main(["evaluator", "fit", "--data", str(path), "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "has no labels" in capsys.readouterr().err


def test_eval_samples_of_the_real_images_scores_as_real(classifier16, data_npz, tmp_path, capsys):
    from ganray.config import DataConfig
    from ganray.data import load_arrays

    x, _, _ = load_arrays(DataConfig(source=str(data_npz), resolution=16, channels=1))
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=x)
    out = tmp_path / "scores.json"
    code = main(["eval", "--samples", str(samples), "--data", str(data_npz), "--classifier", str(classifier16),
                 "--metrics", "fid,kid,is,pr", "--num-samples", "600", "--json", str(out),
                 "--cache-dir", str(tmp_path / "cache")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(out.read_text())
    assert result["fid"] < 1e-6 and result["precision"] == 1.0 and result["recall"] == 1.0
    assert result["num_samples"] == 600 and result["features"] == "classifier"
    assert "fid" in captured.out and list((tmp_path / "cache").glob("stats_*.npz"))


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 16, 16), np.uint8)}, "no 'images' array"),
    ({"images": np.zeros((4, 16, 16), np.float32)}, "expected uint8"),
    ({"images": np.zeros((4, 16, 12, 1), np.uint8)}, "expected N x H x W x C with H == W"),
    ({"images": np.zeros((4, 28, 28, 1), np.uint8)}, "ganray evaluates 16, 32 or 64 px"),
])
def test_eval_samples_bad_files_exit_2(data_npz, tmp_path, capsys, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    assert main(["eval", "--samples", str(path), "--data", str(data_npz)]) == 2
    assert message in capsys.readouterr().err


def test_eval_bad_flags_exit_2(data_npz, tmp_path, capsys):
    samples = tmp_path / "s.npz"
    np.savez(samples, images=np.zeros((20, 16, 16, 1), np.uint8))
    assert main(["eval", "--samples", str(samples), "--data", str(data_npz), "--metrics", "fid,lpips"]) == 2
    assert "--metrics" in capsys.readouterr().err
    assert main(["eval", "--samples", str(samples)]) == 2
    assert "--samples needs --data" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_checkpoint(classifier16, data_npz, tmp_path, capsys):
    import torch

    from ganray import checkpoint
    from ganray.config import debug
    from ganray.models import build_generator

    cfg = debug()  # 16 px, latent 16, width 8
    cfg.data.source = str(data_npz)
    G = build_generator(cfg.model, cfg.data, None)
    checkpoint.save(tmp_path / "checkpoint_000001", {"step": 1}, cfg, G.state_dict())
    code = main(["eval", "--checkpoint", str(tmp_path / "checkpoint_000001"), "--classifier", str(classifier16),
                 "--metrics", "fid,is", "--num-samples", "64", "--json", str(tmp_path / "r.json"),
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["fid"] > 0 and 1.0 <= result["is"] <= 10.0 and result["num_samples"] == 64
    assert torch.isfinite(torch.tensor(result["mode_entropy"]))


def test_eval_cli_metric_names_match_the_evaluator():
    from ganray.metrics import eval_cli, evaluate

    assert tuple(eval_cli.METRICS) == tuple(evaluate.METRICS)
