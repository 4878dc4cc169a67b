"""Work that grows with a request body leaves the event loop once the body is large.

Pure-Python work in a worker thread gives the loop the GIL back every few milliseconds
(``sys.getswitchinterval()``), and C code that releases the GIL (``hashlib`` on large
inputs) runs beside it; C code that holds the GIL (orjson) blocks the loop for one call at
most, not for the sum of the steps. Small bodies, nearly every request, stay on the loop:
a thread hop would cost them more than the work itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

#: Bodies at least this large are worked on in a worker thread.
OFF_LOOP_BYTES = 256 * 1024

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop_if_large(nbytes: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``, in a worker thread when it works on ``nbytes`` >= :data:`OFF_LOOP_BYTES`."""
    if nbytes < OFF_LOOP_BYTES:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
