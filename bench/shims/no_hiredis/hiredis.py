"""Stands in for hiredis so that redis-py falls back to its pure-Python reply parser:
`PYTHONPATH=bench/shims/no_hiredis` measures what hiredis is worth (bench/levers.py)."""

raise ImportError("hiredis is hidden by bench/shims/no_hiredis")
