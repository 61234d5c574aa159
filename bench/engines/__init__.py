"""Storage engines measured by bench/storage_engines.py that the package does not ship (SQLite WAL)."""
