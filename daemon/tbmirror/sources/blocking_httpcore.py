"""httpcore (under httpx's transport), imported without trio: import it from here.

httpcore imports trio at its own import whenever trio is installed (selenium brings it, for
one), only to run async code under trio. tbmirror makes blocking requests only, so the first
import of httpcore, here, hides trio from it (tens of milliseconds less for every command that
builds a source; tests/test_start.py holds `sync` to it). trio itself stays importable.
"""

import sys

__all__ = ["httpcore"]

_hidden = "httpcore" not in sys.modules and "trio" not in sys.modules
if _hidden:
    sys.modules["trio"] = None  # type: ignore[assignment]  # `import trio` raises ImportError
try:
    import httpcore
finally:
    if _hidden:
        del sys.modules["trio"]
