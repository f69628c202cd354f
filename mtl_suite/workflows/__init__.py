"""What each command does end to end: a stage run with its lineage, tune, compare, report, promote, segment.

Orchestration only: the work itself is in data/, imaging/, models/, training/, tuning/ and analysis/, the MLflow
I/O in tracking/."""
