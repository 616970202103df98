"""``python -m RegistrationSuiteLib.cohort.child PARENT_PID -- COMMAND ...``: the CLI, ending itself when
its parent (a batch worker) is gone.

A Dask worker killed mid-pair (``kill -9``, the out-of-memory killer) cannot stop its child; without this
watchdog the orphan would keep computing beside the retried pair. The child polls its parent id and exits
when it changes (the orphan is re-parented).
"""

from __future__ import annotations

import os
import sys
import threading
import time


def _watch(parent: int, interval: float = 0.5) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(137)
        time.sleep(interval)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[1] != "--":
        print("usage: python -m RegistrationSuiteLib.cohort.child PARENT_PID -- COMMAND [OPTIONS]", file=sys.stderr)
        return 2
    threading.Thread(target=_watch, args=(int(argv[0]),), daemon=True).start()
    from ..cli.main import main as cli_main

    return cli_main(argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
