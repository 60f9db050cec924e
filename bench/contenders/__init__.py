"""Contenders, each run in its own subprocess (`python -m bench.contenders.<name> <params.json>`).

Every contender loads the same sandbox data into a fresh DuckDB file and writes one JSON result:
wall time of the load (imports excluded), peak RSS of its process, and the rows it loaded.
"""
