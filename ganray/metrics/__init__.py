"""Evaluation: FID, KID, IS-style classifier score, precision/recall and mode coverage.

Collective functions return floats on every rank; real-data statistics are cached on disk.
Heavy optional pieces (torch-fidelity's Inception, Ray Data) load only when used.
"""

from ganray.metrics.evaluate import (
    all_gather_cat,
    compute_metrics,
    evaluate_generator,
    evaluate_images,
    real_stats,
)
from ganray.metrics.features import FeatureNet, build_feature_net, cache_dir
from ganray.metrics.fid import frechet_distance
from ganray.metrics.isc import inception_score, mode_stats
from ganray.metrics.kid import kid
from ganray.metrics.pr import precision_recall
from ganray.metrics.stats import FeatureStats, StatsCacheError, StatsKey, load_stats, save_stats

__all__ = [
    "FeatureNet", "FeatureStats", "StatsCacheError", "StatsKey", "all_gather_cat", "build_feature_net",
    "cache_dir", "compute_metrics", "evaluate_generator", "evaluate_images", "frechet_distance",
    "inception_score", "kid", "load_stats", "mode_stats", "precision_recall", "real_stats", "save_stats",
]
