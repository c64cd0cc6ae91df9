"""Data curation for pretraining: exact and near-duplicate removal, quality filters, language
identification and a blocklist, over streamed shards, run locally or on a Dask cluster."""

from .config import DEFAULT_PIPELINE, Pipeline, parse_pipeline
from .engines import make_engine
from .minhash import MinHasher, UnionFind, band_keys, candidate_pairs, lsh_threshold, verified_clusters
from .pipeline import CORPUS_FILE, curate
from .reader import Document, iter_documents
from .text import jaccard, shingle_hashes

__all__ = ["CORPUS_FILE", "DEFAULT_PIPELINE", "Document", "MinHasher", "Pipeline", "UnionFind", "band_keys",
           "candidate_pairs", "curate", "iter_documents", "jaccard", "lsh_threshold", "make_engine", "parse_pipeline",
           "shingle_hashes", "verified_clusters"]
