"""What one small GET costs the server in instructions, with the access log off and on.

    python bench/instructions.py [FEW MANY]

Timings on a shared machine move by 10 % from one run to the next; the count of instructions
does not. This runs bench/request_cost.py's loop (the real connection class and hot path, the
shared metrics table, the access line formatted into the log's buffer; no kernel, no client)
under valgrind's callgrind, answering FEW and then MANY GETs of a 4 KiB file, with the access
log off and on: the difference of the totals over MANY - FEW requests is the cost of one,
start-up left out. The writer thread's write to the file, and the kernel, are not counted.
Needs valgrind (Debian package valgrind); takes about a minute.
"""
import os
import re
import shutil
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_COLLECTED = re.compile(rb"Collected : (\d+)")


def instructions(mode: str, requests: int) -> int:
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, os.path.join(_HERE, "request_cost.py"), "--feed", mode,
            str(requests)]
    # One hash seed for every run: the interpreter's own dictionaries then cost the same.
    env = dict(os.environ, PYTHONHASHSEED="0")
    out = subprocess.run(argv, capture_output=True, timeout=1200, env=env)
    found = _COLLECTED.search(out.stderr)
    if out.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr.decode(errors='replace')}")
    return int(found.group(1))


def main() -> None:
    few, many = (int(a) for a in sys.argv[1:3]) if len(sys.argv) == 3 else (2_000, 12_000)
    if not 0 <= few < many:
        raise SystemExit("usage: python bench/instructions.py [FEW MANY], FEW < MANY")
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/instructions.py needs valgrind (Debian package valgrind)")
    per = {}
    for mode in ("off", "on"):
        per[mode] = (instructions(mode, many) - instructions(mode, few)) / (many - few)
    print(f"instructions per GET, access log off: {per['off']:,.0f}")
    print(f"instructions per GET, access log on:  {per['on']:,.0f}"
          f"  (+{per['on'] - per['off']:,.0f}, {per['on'] / per['off']:.3f}x)")


if __name__ == "__main__":
    main()
