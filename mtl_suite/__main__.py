"""`python -m mtl_suite ...` = `mtl-suite ...` (MLproject uses this form so it also runs from a source tree)."""

from mtl_suite.cli import main

main()
