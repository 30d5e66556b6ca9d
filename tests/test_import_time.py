"""Start-up contracts: ``import lplr_index`` and ``lplr-index --help`` load no heavy dependency
but faiss.

scikit-learn takes about 0.8 s to import (7 s on a cold disk) and is needed only by the
classifier and the accuracy/F1 helpers, so the package imports it on first use. faiss
(about 0.05-0.13 s) is loaded at import, before anything else can load it: its OpenBLAS
picks its kernels then (:mod:`lplr_index._faiss`). These are
contract tests on ``sys.modules`` in a fresh interpreter, not timings (the measured times
are in the README's set-up section).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(code: str) -> set[str]:
    """Top-level module names present in ``sys.modules`` after running ``code`` in a fresh Python."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import lplr_index",
        "from lplr_index import LPLRIndex, exact_knn, recall_at_k, lplr",
        "import lplr_index.cli",
        "from lplr_index.cli import build_parser; build_parser().format_help()",
    ],
    ids=["package", "names", "cli-module", "cli-help"],
)
def test_no_scikit_learn_at_start_up(code):
    modules = loaded_after(code)
    assert "lplr_index" in modules
    assert "sklearn" not in modules
    assert "scipy" not in modules  # comes with scikit-learn
    assert "faiss" in modules  # (lplr_index._faiss)
    # never the pipelines' heavy dependencies, in any case
    assert not modules & {"torch", "torchvision", "sentence_transformers", "matplotlib", "pipelines"}


def test_scikit_learn_estimator_resolves_lazily():
    modules = loaded_after(
        "import lplr_index\n"
        "from lplr_index import LPLRKNeighborsClassifier\n"
        "assert LPLRKNeighborsClassifier is lplr_index.LPLRKNeighborsClassifier\n"
        "assert 'LPLRKNeighborsClassifier' in lplr_index.__all__ and 'LPLRKNeighborsClassifier' in dir(lplr_index)\n"
        "from sklearn.base import BaseEstimator\n"
        "assert issubclass(LPLRKNeighborsClassifier, BaseEstimator)"
    )
    assert "sklearn" in modules


def test_star_import_gives_every_public_name():
    namespace: dict = {}
    exec("from lplr_index import *", namespace)
    import lplr_index

    missing = [name for name in lplr_index.__all__ if name not in namespace]
    assert not missing


def test_unknown_attribute_is_an_attribute_error():
    import lplr_index

    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        lplr_index.not_a_name  # noqa: B018
    assert not hasattr(lplr_index, "also_not_a_name")
