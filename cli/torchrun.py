"""``python -m aigc_kit.cli.torchrun``: torchrun, without a traceback when a signal stops it.

``aigc-kit run --nproc N`` starts it; the launcher forwards SIGINT and SIGTERM
here, torchrun passes them on to every process, and they checkpoint and stop.
torchrun then raises its ``SignalException``, which says nothing the launcher
does not already know.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main

if __name__ == "__main__":
    try:
        main()
    except SignalException as stopped:
        sys.exit(128 + int(stopped.sigval))
