"""tqdm progress bars on rank 0, only when stderr is a terminal (or when asked with ``--progress``).

Redirected output (a log file, a batch scheduler) gets no carriage-return updates: the training
loop prints one log line per ``--log_interval`` instead.
"""
import sys
from typing import Iterable, Optional

from tqdm import tqdm

from runtime.distributed import is_main_process


def bars_enabled(enabled: Optional[bool] = None) -> bool:
    """``enabled`` True/False forces bars on/off; None draws them only when stderr is a terminal."""
    if not is_main_process():
        return False
    if enabled is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(enabled)


def progress(iterable: Iterable, desc: Optional[str] = None, total: Optional[int] = None,
             enabled: Optional[bool] = None, **kwargs) -> Iterable:
    if not bars_enabled(enabled):
        return iterable
    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False, file=sys.stderr, **kwargs)
