"""The FP8 mixed-precision sweep orchestrator (README.md). ``STARTED``: when this process began
running the orchestrator (the first import of the package), what "after start" and "done in" count
from (``runtime.host.process_age``)."""

import time

STARTED = time.monotonic()
