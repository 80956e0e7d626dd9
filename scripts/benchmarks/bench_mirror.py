"""spoolmig mirror vs rsync -a --delete over the same real sshd, same run, as ratios.

A synthetic Cyrus 2.3 spool (tests/spoolgen.py; default 2,000 mailboxes and
200,000 messages of 2-50 KB) is served by a private OpenSSH sshd on
127.0.0.1. Both tools pull the two partitions and the configdirectory into
their own destination, through the same sshd, with their default ciphers:

1. first full copy;
2. a second pass with no change (median of 3);
3. a pass after 0.1 % new messages, a few expunges and in-place index changes
   (same size, same second: the rsync trap);
4. the final pass after another small change set: ``spoolmig mirror
   --final`` against ``rsync -a --delete --checksum`` (the rsync pass that gives
   the same guarantee).

Peak memory (max RSS) of every spoolmig run is reported. Usage:
``scripts/bench mirror`` or ``python scripts/benchmarks/bench_mirror.py
--messages 20000 --mailboxes 200`` for a quicker run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from spoolgen import SyntheticServer  # noqa: E402
from sshd import running_sshd  # noqa: E402

SPOOLMIG = str(REPO / ".venv" / "bin" / "spoolmig")


def timed(cmd: list[str], *, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one command, which must succeed."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
        "dt = time.perf_counter() - t\n"
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    dt, rss, code = out.stdout.split()
    if int(code) not in (0, 1):
        raise SystemExit(f"bench: {' '.join(cmd)} exited {code}: {out.stderr[-2000:]}")
    return float(dt), int(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--mailboxes", type=int, default=2_000)
    parser.add_argument("--workdir", default=os.environ.get("SPOOLMIG_BENCH_DIR", "/tmp/spoolmig-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    users = max(1, args.mailboxes // 4)
    t = time.perf_counter()
    server = SyntheticServer(work / "source")
    server.populate(users=users, folders_per_user=3, messages=args.messages)
    files = sum(1 for _ in server.files())
    size = sum(p.lstat().st_size for p in server.files())
    print(f"spool: {len(server.mailboxes)} mailboxes, {files} files, {size / 2**30:.2f} GiB "
          f"(generated in {time.perf_counter() - t:.0f} s)")

    results: dict[str, dict[str, float]] = {}
    with running_sshd(work / "sshd") as sshd:
        src = server.root
        ssh = (f"ssh -p {sshd.port} -i {sshd.identity_file} -o UserKnownHostsFile={sshd.known_hosts} "
               "-o StrictHostKeyChecking=yes -o BatchMode=yes")
        remote = [f"{sshd.user}@{sshd.host}:{src}{p}" for p in (*server.partitions.values(),
                                                                   server.configdirectory)]
        rsync_dest = work / "rsync"
        rsync_dest.mkdir()

        def rsync(*extra: str) -> tuple[float, int]:
            return timed(["rsync", "-a", "--delete", *extra, "-e", ssh, *remote, str(rsync_dest)])

        config = work / "migration.toml"
        config.write_text(
            "[source]\n"
            f'url = "{sshd.url}"\n'
            f'known_hosts = "{sshd.known_hosts}"\n'
            f'identity_file = "{sshd.identity_file}"\n'
            f'configdirectory = "{src}{server.configdirectory}"\n'
            f'sievedir = "{src}{server.sievedir}"\n'
            "partitions = { "
            + ", ".join(f'{k} = "{src}{v}"' for k, v in server.partitions.items())
            + " }\nhashimapspool = true\n\n[mirror]\n"
            f'path = "{work / "mirror"}"\n'
        )

        def spoolmig(*extra: str) -> tuple[float, int]:
            return timed([SPOOLMIG, "mirror", "-q", "--config", str(config), *extra])

        def measure(label: str, rs: tuple[float, int], sm: tuple[float, int]) -> None:
            results[label] = {"rsync_s": rs[0], "spoolmig_s": sm[0], "ratio": sm[0] / rs[0],
                              "spoolmig_maxrss_mb": sm[1] / 1024}
            print(f"{label:<28} rsync {rs[0]:8.2f} s   spoolmig {sm[0]:8.2f} s   "
                  f"ratio {sm[0] / rs[0]:5.2f}   spoolmig peak {sm[1] / 1024:6.1f} MB", flush=True)

        measure("first full copy", rsync(), spoolmig())
        runs_r = [rsync() for _ in range(3)]
        runs_s = [spoolmig() for _ in range(3)]
        measure("no-change pass (median/3)",
                (statistics.median(r[0] for r in runs_r), max(r[1] for r in runs_r)),
                (statistics.median(r[0] for r in runs_s), max(r[1] for r in runs_s)))
        new = max(1, args.messages // 1000)
        server.deliver(new)
        server.expunge(max(1, new // 10))
        server.flag_change(max(1, new // 4))
        measure(f"after +{new} msgs, expunges", rsync(), spoolmig())
        server.deliver(max(1, new // 2))
        server.expunge(max(1, new // 20))
        server.flag_change(max(1, new // 4))
        measure("final pass (--checksum)", rsync("--checksum"), spoolmig("--final"))

    print(json.dumps({"messages": args.messages, "mailboxes": len(server.mailboxes), "files": files,
                      "bytes": size, "cpus": os.cpu_count(), "results": results}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
