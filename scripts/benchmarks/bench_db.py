"""Benchmark: `spoolmig db show` against `cyr_dbtool FILE <backend> show` on the same file.

Generates a 120,000-record skiplist and twoskip with Cyrus's own cyr_dbtool
(mailbox-like keys, seen-like values), then times both tools on the same
file in the same run (median of several runs). Cyrus recovers and
checkpoints a skiplist it opens without a current skipstamp, so every
cyr_dbtool run gets a fresh copy (the copy is not timed). Prints wall times,
the ratio and the peak RSS of each child (getrusage).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from cyrus_tools import CyrusTools  # noqa: E402

RECORDS = int(os.environ.get("BENCH_RECORDS", "120000"))
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
SPOOLMIG = [str(ROOT / ".venv" / "bin" / "spoolmig")]


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def batch(n: int) -> bytes:
    """cyr_dbtool batch input: one transaction of n mailbox-like keys and seen-like values."""
    lines = [b"BEGIN\n"]
    for i in range(n):
        key = b"user.u%05d.%s" % (i // 12, (b"INBOX", b"Sent", b"Drafts", b"Trash", b"Archive.%d" % (i % 8))[i % 5])
        key += b".%d" % i
        value = b"%d %d %d 1:%d" % (1, 1600000000 + i, i % 5000, i % 5000 + 1)
        lines.append(b"SET " + literal(key) + b" " + literal(value) + b"\n")
    lines.append(b"COMMIT\n")
    return b"".join(lines)


def run_measured(cmd: list[str], env: dict[str, str], work: Path) -> tuple[float, int, float, bytes]:
    """Wall time, peak RSS (KiB), CPU seconds (user+sys) and stdout of one run of ``cmd``.

    The peak RSS comes from GNU time: getrusage/wait4 of a child forked from
    this Python process would count this process's own memory (Linux carries
    the pre-exec high-water mark over exec).
    """
    report = work / "rusage.txt"
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(report), *cmd], capture_output=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    rss, user, system = report.read_text().split()[-3:]
    return wall, int(rss), float(user) + float(system), proc.stdout


def bench(tools: CyrusTools, backend: str, work: Path) -> None:
    db = work / f"{backend}.db"
    tools.dbtool(db, backend, "batch", input=batch(RECORDS), create=True)
    copy = work / f"{backend}-copy.db"
    ours_env = dict(os.environ)
    theirs, mine = [], []
    expected = None
    for _ in range(RUNS):
        shutil.copyfile(db, copy)
        wall, rss_c, cpu_c, out_c = run_measured(
            ["/usr/lib/cyrus/bin/cyr_dbtool", "-C", str(tools.conf), str(copy),
             backend, "show"], tools.env, work)
        theirs.append((wall, rss_c, cpu_c))
        wall, rss_o, cpu_o, out_o = run_measured([*SPOOLMIG, "db", "show", str(db)], ours_env, work)
        mine.append((wall, rss_o, cpu_o))
        if expected is None:
            expected = out_c
        if out_o != out_c:
            raise SystemExit(f"{backend}: spoolmig db show differs from cyr_dbtool show")
    t_c = statistics.median(w for w, _, _ in theirs)
    t_o = statistics.median(w for w, _, _ in mine)
    c_c = statistics.median(c for _, _, c in theirs)
    c_o = statistics.median(c for _, _, c in mine)
    size = db.stat().st_size
    print(f"{backend:8} {RECORDS} records, {size / 1e6:.1f} MB, output {len(expected or b'') / 1e6:.1f} MB")
    print(f"  cyr_dbtool show : median {t_c * 1000:7.1f} ms wall, {c_c * 1000:7.1f} ms CPU, "
          f"peak RSS {max(r for _, r, _ in theirs) / 1024:6.1f} MiB")
    print(f"  spoolmig db show: median {t_o * 1000:7.1f} ms wall, {c_o * 1000:7.1f} ms CPU, "
          f"peak RSS {max(r for _, r, _ in mine) / 1024:6.1f} MiB")
    print(f"  ratio spoolmig/cyr_dbtool: {t_o / t_c:.2f}x wall, {c_o / c_c:.2f}x CPU "
          f"(median of {RUNS} runs each, outputs identical)")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="spoolmig-bench-db-") as tmp:
        tools = CyrusTools(tmp)
        work = Path(tmp)
        for backend in ("skiplist", "twoskip"):
            bench(tools, backend, work)


if __name__ == "__main__":
    main()
