"""The columnar preprocessing engine (issue 12): the row job's stages over pyarrow RecordBatches.

Flow: raw logs -> parse.py (read, parse, validate) -> label.py (bucketed join, labels) ->
encode.py (split, Example encoding, TFRecord write) + analyze.py (transform artifacts) +
stats.py (TFDV statistics), with progress.py's progress lines; job.py chains them
(`pipeline.preprocess --engine columnar`). Each stage reproduces the row stage of
`transforms/` (same kept records, same dead letters, same bytes) and is tested for that
equivalence in tests/test_columnar_*.py.
"""
