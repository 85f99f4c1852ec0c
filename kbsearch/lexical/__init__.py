"""Lexical stage: BM25 over the same index rows as the vector index, and its tokenisers.

``bm25.BM25Index`` scores questions (raw and normalised to [0, 1] by the query's upper bound); errors
inside rank-bm25 are mapped to ``BackendError`` (cause ``bm25-error``) here, so the query path can fall
back. ``tokenize`` has character unigrams+bigrams for Chinese (the default) and jieba words.
"""
