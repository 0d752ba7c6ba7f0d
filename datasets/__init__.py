"""Dassl readers for the CoOp benchmark datasets and the generated Synthetic dataset.

Importing the package is light (no Dassl); `register_all()` imports the reader modules, and each
registers its class in Dassl's DATASET_REGISTRY under the name DATASET.NAME uses. The ImageNet OOD
benchmark's test sets (datasets/ood_sets.py) are image lists for scripts/ood_eval.py, not registered readers.
"""
import importlib

READER_MODULES = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
    "imagenetv2",
    "imagenet_sketch",
    "imagenet_a",
    "imagenet_r",
    "synthetic",
)


def register_all():
    """Import every reader module (safe to call repeatedly)."""
    for module in READER_MODULES:
        importlib.import_module(f"{__name__}.{module}")
