"""Package metadata and dependencies of the FDBPL plugin for Dassl.

The code runs from the checkout, as CoOp's does (`python train.py`, `python -m ril`), so no
package is copied into site-packages: the top-level `datasets/` package would shadow or be
shadowed by HuggingFace's `datasets`. `pip install -e .` installs the dependencies and records
the project. Dassl.pytorch is installed by scripts/install.sh (it is not on PyPI).
"""
import os
import re

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, "trainers", "__init__.py")) as handle:
        return re.search(r'^__version__ = "([^"]+)"', handle.read(), re.MULTILINE).group(1)


def read_requirements():
    with open(os.path.join(HERE, "requirements.txt")) as handle:
        lines = (line.split("#", 1)[0].strip() for line in handle)
        return [line for line in lines if line]


setup(
    name="fdbpl-dassl",
    version=read_version(),
    description="FDBPL (Faster Distillation-Based Prompt Learning) and its peers as a Dassl.pytorch plugin",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=[],
    install_requires=read_requirements(),
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3"], "teachers": ["open_clip_torch>=2.20"]},
)
