"""`python -m lokal.engines.worker FD PARENT_PID`: the worker program (`child`)."""

import sys

from lokal.engines.worker.child import main

raise SystemExit(main(sys.argv[1:]))
