"""Statistics, tables and figures built from finished runs (compare, report)."""
