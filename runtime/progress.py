"""tqdm progress bars on rank 0 only, off with ``--silent``."""
from typing import Iterable, Optional

from tqdm import tqdm

from runtime.distributed import is_main_process


def progress(iterable: Iterable, desc: Optional[str] = None, total: Optional[int] = None,
             silent: bool = False, **kwargs) -> Iterable:
    if silent or not is_main_process():
        return iterable
    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False, **kwargs)
