"""Peak resident memory of every process a command starts (e.g. each torchrun rank).

    python benchmarks/peak_rss.py --match "vilgkit run" -- torchrun --nproc-per-node 2 -m vilgkit run RECIPE ...

Polls ``/proc/<pid>/status`` (``VmHWM``: the kernel's own high-water mark of the process's resident
set) of the command's descendants twice a second and prints one JSON line per process whose
command line contains ``--match``: pid, peak RSS in bytes and GiB, and the command's exit status.
Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(c) for c in fh.read().split()]
    except OSError:
        return []


def _descendants(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = _children(pid)
        out += kids
        todo += kids
    return out


def _hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--match",
        default="",
        help="report only processes whose command line contains this",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    proc = subprocess.Popen(command)
    peaks: dict[int, tuple[int, str]] = {}
    while proc.poll() is None:
        for pid in _descendants(proc.pid):
            hwm = _hwm(pid)
            if hwm is not None:
                cmd = peaks.get(pid, (0, ""))[1] or _cmdline(pid)
                peaks[pid] = (max(hwm, peaks.get(pid, (0, ""))[0]), cmd)
        time.sleep(0.5)
    for pid, (peak, cmd) in sorted(peaks.items()):
        if args.match in cmd:
            print(
                json.dumps(
                    {
                        "pid": pid,
                        "peak_rss_bytes": peak,
                        "peak_rss_gib": round(peak / 2**30, 3),
                        "cmd": cmd[:160],
                        "exit": proc.returncode,
                    }
                )
            )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
