"""Evaluation: FID, KID, IS-style classifier score, precision/recall and mode coverage.

Collective functions return floats on every rank; real-data statistics are cached on disk.
Names load lazily (PEP 562), so the CLI can register `ganray eval` without importing torch.
"""

import importlib

# Eager: the function shares its module's name, so a lazy lookup would find the submodule once
# anything imported `ganray.metrics.kid`. It needs numpy only.
from ganray.metrics.kid import kid

_HOMES = {
    "evaluate": ["all_gather_cat", "compute_metrics", "evaluate_generator", "evaluate_images", "real_stats"],
    "features": ["FeatureNet", "build_feature_net", "cache_dir"],
    "fid": ["frechet_distance"],
    "isc": ["inception_score", "mode_stats"],
    "pr": ["precision_recall"],
    "stats": ["FeatureStats", "StatsCacheError", "StatsKey", "load_stats", "save_stats"],
}
_WHERE = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted([*_WHERE, "kid"])


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'ganray.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ganray.metrics.{_WHERE[name]}"), name)
