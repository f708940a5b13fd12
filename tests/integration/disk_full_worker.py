"""`sieve worker`, except that its disk is "full" while a flag file exists.

Every attempt to write a range raises ENOSPC (what a full filesystem answers) as long as
the file named by argv[1] exists; the test removes it to free the disk. Fault injection
lives here, in the test tree, not in the worker.

Usage: python -m tests.integration.disk_full_worker FLAG_FILE
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Any

from streams.cli import main
from streams.worker.sink import RangeWriter

_flag = Path(sys.argv[1])
_real_stage = RangeWriter.stage


def _stage_unless_full(self: RangeWriter, **kwargs: Any) -> Any:
    if _flag.exists():
        raise OSError(errno.ENOSPC, "No space left on device")
    return _real_stage(self, **kwargs)


RangeWriter.stage = _stage_unless_full  # type: ignore[method-assign]
sys.argv = ["sieve", "worker"]
main()
