"""Start benchmark: `tbmirror` commands with nothing to do, against importing their libraries.

Each command is timed against `python -c "import httpx, pydantic, structlog"`, measured in the
same run (the baseline issue 29 set: tbmirror itself no longer uses pydantic; its settings are
msgspec structs).

Builds (once per --workdir) an experiment of --runs FINISHED runs x 5 keys x 10 points in a local
`mlflow server`, mirrors it with one `tbmirror sync`, then times, in --rounds rounds, each of
these as a fresh process, one after the other in the same round (so a round's ratios hold when
the machine's speed drifts):
  - baseline: `python -c "import httpx, pydantic, structlog"`;
  - the same and httpcore (what any request imports: `import httpx` alone does not; httpcore
    imports trio when it is installed, as selenium, a test dependency, does here: printed;
    tbmirror's own import of httpcore hides it, sources/blocking_httpcore.py);
  - `tbmirror sync` with nothing new (target: <= 1.5x the baseline, the median of the rounds'
    ratios);
  - `tbmirror --help` (target: <= 0.15 s, the median; an absolute figure, so it is only a target
    on an idle machine: the load average is printed);
  - `tbmirror status` and `tbmirror check --offline` (ratios shown, no target).

Each command's CPU seconds (user + system, from the kernel's accounting of the child) are shown
beside its wall time, with their ratio to the baseline's: on a busy machine wall times stretch
with the load while CPU seconds mostly do not.

Every command runs with bytecode caching on (PYTHONDONTWRITEBYTECODE unset: an installed
package has its .pyc files; the warm-up run writes them for an editable one).

With --instructions, each command also runs once under valgrind's callgrind (`apt install
valgrind`), which counts the instructions it executes: a figure the machine's load does not
change, where wall and CPU seconds vary by ~10 % from one round to the next on a shared machine.
It counts what the command itself executes (not the server's work, nor waits).

Usage: python benchmarks/start.py [--rounds 15] [--runs 20] [--workdir DIR] [--instructions]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Results, build_runs, open_store, run_sync, write_config
from tbmirror.local_mlflow import LocalMlflowServer

EXPERIMENT = "start"
BASELINE = "baseline: import httpx, pydantic, structlog"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workdir", type=Path, help="keeps the workload between invocations")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions with callgrind"
    )
    args = parser.parse_args()
    if min(args.rounds, args.runs) < 1:
        parser.error("--rounds and --runs must be at least 1")
    with Results("start") as results:
        measure(args, results)


def measure(args: argparse.Namespace, results: Results) -> None:
    """Run the benchmark; print and record its figures."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # for the commands (see above)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tbmirror-bench-"))
    server = LocalMlflowServer(workdir / "mlflow")
    store = open_store(server)
    keys = [f"metric_{k}" for k in range(5)]
    build_runs(store, EXPERIMENT, args.runs, keys, 10)
    store.engine.dispose()
    (workdir / "mirror").mkdir(exist_ok=True)
    with server:
        config = write_config(workdir / "mirror", server.url, EXPERIMENT)
        run_sync(config)  # the mirror is complete: every later sync has nothing to do
        tbmirror = [sys.executable, "-m", "tbmirror"]
        commands = {
            BASELINE: [sys.executable, "-c", "import httpx, pydantic, structlog"],
            "import httpx, pydantic, structlog, httpcore": [
                sys.executable,
                "-c",
                "import httpx, pydantic, structlog, httpcore",
            ],
            "tbmirror sync (nothing new)": [*tbmirror, "sync", "--config", str(config)],
            "tbmirror --help": [*tbmirror, "--help"],
            "tbmirror status": [*tbmirror, "status", "--config", str(config)],
            "tbmirror check --offline": [*tbmirror, "check", "--offline", "--config", str(config)],
        }
        for command in commands.values():  # warm the page cache once, write the bytecode
            timed(command)
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                wall, used = timed(command)
                seconds[name].append(wall)
                cpu[name].append(used)
        counted = (
            {name: instructions(command) for name, command in commands.items()}
            if args.instructions
            else {}
        )
    load = os.getloadavg()[0]

    results.workload = f"{args.runs} runs x 5 keys x 10 points, mirrored; {args.rounds} rounds"
    print(f"workload: {results.workload}")
    print(f"load average (1 min): {results.load_average:.2f} at the start, {load:.2f} at the end")
    trio = importlib.util.find_spec("trio") is not None
    print(f"trio installed (httpcore imports it, not under tbmirror): {'yes' if trio else 'no'}")
    results.add("trio installed", "yes" if trio else "no")
    baseline, baseline_cpu = seconds[BASELINE], cpu[BASELINE]
    targets = {"tbmirror sync (nothing new)": 1.5}
    for name, times in seconds.items():
        median = statistics.median(times)
        line = f"{name:45} median {median:6.3f} s (min {min(times):.3f}, max {max(times):.3f})"
        results.add(f"{name}: median", median, "s")
        if name != BASELINE:
            ratio = _median_ratio(times, baseline)
            bound = targets.get(name)
            met = None if bound is None else ratio <= bound
            line += f", {ratio:.2f}x the baseline"
            if met is not None:
                line += f" (<= {bound}x: {'met' if met else 'NOT met'})"
            target = f"<= {bound}x" if bound else ""
            results.add(f"{name}: / baseline", ratio, "x", target, met)
        cpu_median = statistics.median(cpu[name])
        results.add(f"{name}: CPU median", cpu_median, "s")
        line += f"; CPU {cpu_median:.3f} s"
        if name != BASELINE:
            cpu_ratio = _median_ratio(cpu[name], baseline_cpu)
            results.add(f"{name}: CPU / baseline", cpu_ratio, "x")
            line += f", {cpu_ratio:.2f}x"
        print(line)
    for name, count in counted.items():
        line = f"{name:45} {count / 1e6:6.0f} million instructions"
        results.add(f"{name}: instructions", count / 1e6, "million")
        if name != BASELINE:
            ratio = count / counted[BASELINE]
            line += f", {ratio:.2f}x the baseline"
            results.add(f"{name}: instructions / baseline", ratio, "x")
        print(line)
    help_median = statistics.median(seconds["tbmirror --help"])
    met = help_median <= 0.15
    print(f"tbmirror --help <= 0.15 s: {'met' if met else 'NOT met'} "
          f"(an absolute figure: it holds on an idle machine only)")  # fmt: skip
    results.add("tbmirror --help <= 0.15 s", help_median, "s", "<= 0.15 s", met)
    results.add("load average at the end", load)


def timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of `command` as a fresh process; exits with its
    output if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n"
                         f"{result.stderr[-3000:]}")  # fmt: skip
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, used


def instructions(command: list[str]) -> int:
    """Instructions `command` executes as a fresh process, counted by valgrind's callgrind;
    exits if valgrind is missing or the command fails."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt install valgrind)")
    counting = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command]
    result = subprocess.run(counting, capture_output=True, text=True)
    collected = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or collected is None:
        raise SystemExit(f"{' '.join(counting)} failed ({result.returncode}):\n"
                         f"{result.stderr[-3000:]}")  # fmt: skip
    return int(collected.group(1))


def _median_ratio(times: list[float], baseline: list[float]) -> float:
    """The median of the rounds' ratios (each round's command against its own baseline)."""
    return statistics.median(t / b for t, b in zip(times, baseline, strict=True))


if __name__ == "__main__":
    main()
