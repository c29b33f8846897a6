"""Progress bars for the long HASB steps (Hessian traces, sweeps, SubNet evaluation): ``tqdm.auto``.

Every long function takes ``progress``: ``False``/``None`` (silent), ``True`` (its own ``tqdm.auto`` bar, closed
when it returns) or a bar you made (``tqdm.auto.tqdm(...)`` or anything with ``update(n)``), which it advances and
leaves open, so one bar can cover several calls. A bar given without a ``total`` gets the call's total.
"""
from __future__ import annotations

from contextlib import contextmanager

from tqdm.auto import tqdm


@contextmanager
def progress_bar(progress, total: int, desc: str):
    """The bar to ``update`` for ``total`` steps of work, per ``progress`` (module docstring)."""
    if progress is not None and not isinstance(progress, bool) and hasattr(progress, "update"):
        if getattr(progress, "total", 0) is None:
            progress.total = total
            if hasattr(progress, "refresh"):
                progress.refresh()
        yield progress
        return
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
