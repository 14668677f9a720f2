"""A persistent FAISS vector index (cosine similarity, stable ids, Parquet metadata).

    index = VectorIndex.create(384, expected_size=len(vectors))   # flat when small, HNSW when large
    ids = index.add(vectors, metadata=table)
    result = index.search(queries, k=10)        # .scores, .ids
    index.metadata_for(result.ids[0])
    index.save("my_index"); VectorIndex.open("my_index")   # memory-mapped
    build_index(table, embed, "my_index")       # streaming + resumable
"""
from .build import build_index
from .choose import FLAT_LIMIT, KINDS, choose_kind
from .result import SearchResult
from .vector_index import VectorIndex

__all__ = ["FLAT_LIMIT", "KINDS", "SearchResult", "VectorIndex", "build_index", "choose_kind"]
