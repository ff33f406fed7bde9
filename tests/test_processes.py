"""`sigint_deferred` holds a Ctrl-C back during its block, then delivers it to the handler of
before, whichever it is: each case in a fresh interpreter that sends itself SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

SCRIPT = """
import os, signal, sys
from tbmirror.processes import sigint_deferred
signal.signal(signal.SIGINT, {handler})
try:
    with sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        print("held", flush=True)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(3)
print("after", flush=True)
"""


@pytest.mark.parametrize(
    ("handler", "stdout", "code"),
    [
        ("signal.default_int_handler", "held\nKeyboardInterrupt\n", 3),
        ("signal.SIG_DFL", "held\n", -signal.SIGINT),  # the default: the process ends by it
        ("signal.SIG_IGN", "held\nafter\n", 0),
        ("lambda *_: print('handled', flush=True)", "held\nhandled\nafter\n", 0),
    ],
)
def test_a_held_ctrl_c_reaches_the_handler_of_before(handler: str, stdout: str, code: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(handler=handler)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.stdout, result.returncode) == (stdout, code), result.stderr
