"""`python barrier_worker.py BARRIER mtl-suite-args...`: the CLI, but every stage run first waits (up to a minute)
until two worker processes have reached one, so two workers sharing a command's units each take one: without it,
the first worker to start could claim every unit before the second one has opened the study."""

import os
import pathlib
import sys
import time

import mtl_suite.workflows.stage as stage

real, barrier = stage.run_stage, pathlib.Path(sys.argv[1])


def run_stage(request, say=print):
    (barrier / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    return real(request, say)


stage.run_stage = run_stage
if __name__ == "__main__":
    from mtl_suite.cli import main

    sys.argv = ["mtl-suite", *sys.argv[2:]]
    main()
