"""How good is a trained pipeline: reconstruction, likelihood, FID/KID, conditional
fidelity, diversity and memorisation (``evaluate``), and ``compare`` across runs."""

from ..reports import compare, format_report, read_report
from .classifier import ImageClassifier, train_classifier
from .inception import FIDInceptionV3, load_inception
from .measures import feature_distances, mean_pairwise_distance, nearest_neighbours, nll_summary, reconstruction_quality
from .report import evaluate, evaluate_run

__all__ = [
    "ImageClassifier", "train_classifier", "FIDInceptionV3", "load_inception", "feature_distances",
    "mean_pairwise_distance", "nearest_neighbours", "nll_summary", "reconstruction_quality", "compare",
    "evaluate", "evaluate_run", "format_report", "read_report",
]
