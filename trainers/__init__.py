"""Prompt-learning trainers for Dassl. `register_all()` registers every trainer with Dassl.

The package import itself stays light, so its pure modules (losses, prompt learners, text
encoder, CLIP loading) import without Dassl.
"""
import importlib

__version__ = "0.1.0"

TRAINER_MODULES = (
    "zsclip", "coop", "maple", "promptsrc", "fdbpl", "coop_fdbpl", "maple_fdbpl", "promptsrc_fdbpl",
    "caspl_boost", "caspl", "promptkd", "ivlp", "vpt", "vpt_fdbpl", "cocoop", "cocoop_fdbpl",
)


def register_all():
    """Apply the Dassl compatibility fixes, then import (and so register) every trainer."""
    importlib.import_module(f"{__name__}.dassl_compat")
    for module in TRAINER_MODULES:
        importlib.import_module(f"{__name__}.{module}")
