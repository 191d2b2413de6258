"""Feature networks for FID/KID/PR/IS: ganray's own classifier, or torch-fidelity's Inception.

A FeatureNet takes images as training sees them (float N x C x H x W in [-1, 1] at the data
resolution) and returns features (N x dim) and, when it has a classifier head, logits (N x K).
Its `fingerprint` identifies the weights; cached real statistics are keyed on it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch

from ganray import dist
from ganray.metrics import classifier as clf
from ganray.metrics import inception
from ganray.metrics.cachefiles import cache_dir


class FeatureNet:
    def __init__(self, name: str, dim: int, fingerprint: str, forward: Callable, module: torch.nn.Module,
                 resolution: int | None = None, channels: int | None = None, num_classes: int | None = None):
        self.name, self.dim, self.fingerprint = name, dim, fingerprint
        self.module = module
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        self._forward = forward
        self.meta = None  # ClassifierMeta for ganray's classifier
        self.weights_path: Path | None = None  # the file the weights came from

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"{self.name} features need N x C x H x W images, got shape {tuple(x.shape)}")
        if self.channels is not None and x.shape[1] != self.channels:
            raise ValueError(f"{self.name} was trained on {self.channels}-channel images, got {x.shape[1]} channels")
        if self.resolution is not None and tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            raise ValueError(
                f"{self.name} was trained at {self.resolution} x {self.resolution} px, got {tuple(x.shape[-2:])}"
            )

    @torch.no_grad()
    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward pass: (features float32 N x dim, logits float32 N x K or None)."""
        self._check(x)
        f, logits = self._forward(x.to(self.device))
        return f.float(), (logits.float() if logits is not None else None)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.features_and_logits(x)[1]


def classifier_net(path_or_bytes: str | Path | bytes, device: str | torch.device = "cpu") -> FeatureNet:
    if isinstance(path_or_bytes, bytes):
        net, meta, fingerprint = clf.classifier_from_bytes(path_or_bytes)
    else:
        net, meta, fingerprint = clf.load_classifier(path_or_bytes)
    net = net.to(device)

    def forward(x):
        f = net.features(x)
        return f, net.head(f)

    fn = FeatureNet("classifier", meta.feature_dim, fingerprint, forward, net,
                    meta.resolution, meta.channels, meta.num_classes)
    fn.meta = meta
    fn.weights_path = None if isinstance(path_or_bytes, bytes) else Path(path_or_bytes)
    return fn


def inception_net(weights: str | None = None, device: str | torch.device = "cpu") -> FeatureNet:
    net, fingerprint, path = inception.load_inception(weights, device)

    def forward(x):
        return net(inception.to_uint8_rgb(x))  # (2048-d pool3 features, 1008 unbiased logits)

    fn = FeatureNet("inception", inception.FEATURE_DIM, fingerprint, forward, net, num_classes=inception.NUM_LOGITS)
    fn.weights_path = path
    return fn


def _ensure_classifier(path: Path, dataset_fingerprint: str | None, labelled, log) -> None:
    """Train and cache the classifier on rank 0 when missing; every rank waits for the file."""
    if not path.is_file():
        if labelled is None or not labelled.has_labels:
            raise clf.ClassifierError(
                f"no evaluation classifier for dataset {dataset_fingerprint} at {path}; train one with "
                "`ganray evaluator fit --data SOURCE`, or set eval.features to inception or none"
            )
        if dist.rank() == 0:
            log(f"training the evaluation classifier on {len(labelled)} labelled images (cached at {path})")
            net, meta = clf.fit_classifier(labelled.images(), labelled.label_tensor(),
                                           dataset_fingerprint=labelled.fingerprint)
            clf.save_classifier(path, net, meta)
            log(f"evaluation classifier: held-out accuracy {meta.accuracy:.4f}, fit in {meta.fit_seconds:.0f} s")
    dist.barrier()


def resolve_kind(eval_cfg, dataset_fingerprint: str | None, labelled=None) -> str:
    """eval.features with `auto` decided: classifier (labelled data or a cached classifier),
    else inception when torch-fidelity and local weights exist, else none (with a warning)."""
    kind = eval_cfg.features
    if kind != "auto":
        return kind
    has_labels = labelled is not None and labelled.has_labels
    cached = dataset_fingerprint is not None and clf.default_classifier_path(cache_dir(eval_cfg), dataset_fingerprint).is_file()
    if eval_cfg.classifier_path or has_labels or cached:
        return "classifier"
    try:
        if inception.is_available() and inception.local_weights(eval_cfg.inception_weights) is not None:
            return "inception"
    except inception.InceptionUnavailable:
        pass
    warnings.warn(
        "eval.features=auto: the data has no labels for ganray's classifier and no Inception weights are "
        f"available (eval.inception_weights / ${inception.WEIGHTS_ENV}); evaluation is off", stacklevel=2
    )
    return "none"


def build_feature_net(eval_cfg, resolution: int, channels: int, dataset_fingerprint: str | None = None,
                      device: str | torch.device = "cpu", *, labelled=None, log=print) -> FeatureNet | None:
    """The feature network eval_cfg asks for, or None for features=none (or auto with nothing usable).

    labelled: RealData with labels, used to train the classifier on first use (collective then:
    rank 0 trains, all ranks wait). Pass dataset_fingerprint=labelled.fingerprint when given.
    """
    if labelled is not None and dataset_fingerprint is None:
        dataset_fingerprint = labelled.fingerprint
    kind = resolve_kind(eval_cfg, dataset_fingerprint, labelled)
    if kind == "none":
        return None
    if kind == "inception":
        return inception_net(eval_cfg.inception_weights, device)
    if eval_cfg.classifier_path:
        path = Path(eval_cfg.classifier_path).expanduser()
        if not path.is_file():
            raise clf.ClassifierError(f"eval.classifier_path {str(path)!r} does not exist")
    elif dataset_fingerprint is None:
        raise clf.ClassifierError("eval.features=classifier needs eval.classifier_path or a dataset fingerprint")
    else:
        path = clf.default_classifier_path(cache_dir(eval_cfg), dataset_fingerprint)
        _ensure_classifier(path, dataset_fingerprint, labelled, log)
    net = classifier_net(path, device)
    if (net.resolution, net.channels) != (resolution, channels):
        raise clf.ClassifierError(
            f"classifier {path} was trained on {net.channels} x {net.resolution} x {net.resolution} images; "
            f"the data is {channels} x {resolution} x {resolution}"
        )
    meta_fp = net.meta.dataset_fingerprint
    if dataset_fingerprint is not None and meta_fp != dataset_fingerprint:
        warnings.warn(f"classifier {path} was trained on dataset {meta_fp}, evaluating dataset {dataset_fingerprint}",
                      stacklevel=2)
    return net
