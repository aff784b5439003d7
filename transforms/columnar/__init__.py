"""The columnar preprocessing engine (issue 12): the row job's stages over pyarrow RecordBatches.

Flow: raw logs -> **ReadParseImpressions / ReadParseEvents** (columnar/parse.py) -> ...
Each stage reproduces the row stage of `transforms/` (same kept records, same dead letters)
and is tested for that equivalence in tests/test_columnar_*.py.
"""
