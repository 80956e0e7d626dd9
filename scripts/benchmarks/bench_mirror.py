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
   the same guarantee);
5. with a big server's configdirectory: seen, subscription and quota files
   of 20,000 more users (``--config-users``; their mailboxes left out) added
   and copied, then a pass with no change (median of 3) and a pass after
   0.1 % new messages again. Those files change in place, so every pass of
   either tool stats each of them.

Beside the first copy, the same copies each followed by a ``sync``: spoolmig's
pass ends with its files on disk, rsync's leaves gigabytes to the kernel's
writeback, so this row compares the two copies made equally durable.

And a floor for the first copy, on its own fresh ext4 between the two tools'
copies: the same tar stream spoolmig asks for, made by the source's GNU tar
and carried by OpenSSH's client with spoolmig's cipher (aes128-gcm), unpacked
by GNU tar (``ssh … 'tar -cf - TREES' | tar -xf -``). It is what this
transport and this machine allow a copy written in C, keeping no state and
syncing nothing; its ratio to rsync bounds the first copy's.

Three quirks of the benchmark machine are kept out of the timings, and shown:

* Destinations: each tool writes to its own fresh ext4 filesystem, a loop-mounted
  image (2x the spool + 1 GiB) under the work directory, made just before that
  tool's first copy after a ``sync``. On an ext4 that has just had many files
  deleted, creating files is slow (the inode allocator skips recently deleted
  inodes), so a shared or reused filesystem makes the first copy measure the
  deletion. Without root or a loop device the bench falls back to plain
  directories and says so.
* Account: ``--account stock`` (default) logs both tools in as ``spoolbench``, a
  system user created if missing with a stock Debian home (/etc/skel's .bashrc),
  who owns the spool as cyrus would. ``--account root`` logs in as root, whose
  .bashrc on the benchmark machine runs ``pyenv init`` (~0.175 s of CPU) for
  every remote command. The cost of ``ssh ... true`` (median of 3) is printed
  first: every remote command of either tool pays it. Locally both tools run as
  root either way.
* Page cache: before each first copy every cache is dropped and the source is
  read back in (:func:`level_caches`), so the second tool to copy does not
  find the first one's destination cached and the source partly evicted.

And one of the synthetic spool: it is minutes old, where a live server's is
mostly years old. An incremental spoolmig pass hears in full only of paths
changed since two minutes before its previous pass began (their ctime), so
spoolmig's first copy starts once the spool is that old (:data:`AGE_S`; rsync
copies in the meantime, so this costs the run ~1 minute). The changes made
for passes 3 and 4 are new, as on a live server.

The account and destination mode are in the JSON output. Peak memory of every
run of either tool is reported: the peak of the summed RSS of its whole process
tree (spoolmig's fetch helpers, rsync's processes), sampled every 50 ms. Usage: ``scripts/bench mirror`` or ``python
scripts/benchmarks/bench_mirror.py --messages 20000 --mailboxes 200`` for a
quicker run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from spoolgen import SyntheticServer  # noqa: E402
from sshd import running_sshd  # noqa: E402

from spoolmig.mirror.worker import UNCHANGED_MARGIN_NS  # noqa: E402

SPOOLMIG = str(REPO / ".venv" / "bin" / "spoolmig")
#: The ``--account stock`` login: a dedicated system user, as cyrus is on a real server.
BENCH_USER = "spoolbench"
#: How old the spool is when spoolmig's first copy starts: past the time before a pass that its next
#: pass hears of in full, plus a few seconds.
AGE_S = UNCHANGED_MARGIN_NS // 1_000_000_000 + 5
GiB = 2**30


def tree_rss(root: int) -> int:
    """Summed resident memory (bytes) of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/statm") as f:
                rss[int(name)] = int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def timed(cmd: list[str], *, ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall time and peak memory (KiB) of one command, which must exit with a code in ``ok``.

    The memory is the peak of the summed RSS of the command's whole process tree,
    sampled every 50 ms: spoolmig fetches with helper processes and rsync runs as
    several processes, so one process's maximum would understate either.
    """
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _out, err = proc.communicate()
    dt = time.perf_counter() - t
    done.set()
    sampler.join()
    if proc.returncode not in ok:
        raise SystemExit(f"bench: {' '.join(cmd)} exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return dt, peak // 1024


def level_caches(source: Path) -> str:
    """Start a first copy from the page cache every first copy starts from: the source, read back.

    The machine's 24 GiB hold the 5 GiB source, and each destination twice
    (the loop-mounted ext4's pages and its image file's). The second tool
    to copy found the first tool's 10 GiB still cached and the source partly
    evicted. So all caches are dropped and the source is read back in before
    each first copy.
    """
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as error:
        return f"not levelled: /proc/sys/vm/drop_caches: {error.strerror}"
    subprocess.run("find . -type f -print0 | xargs -0 cat > /dev/null", shell=True, cwd=source, check=True)
    return "dropped, then the source read back in, before each first copy"


def run(cmd: list[str], what: str) -> None:
    """Run a set-up command; stop the bench with its error if it fails."""
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode:
        raise SystemExit(f"bench: {what}: {' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")


def ensure_account(name: str) -> pwd.struct_passwd:
    """The stock login account, created if missing: a system user with /etc/skel's home.

    Its .bashrc returns at once for a non-interactive shell, so a remote command
    costs what it costs on a stock server, not what this machine's root .bashrc
    adds. The test sshd runs without PAM, and sshd without PAM refuses a locked
    account (useradd leaves ``!`` in the password field); ``*`` still allows no
    password but lets the key in.
    """
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        run(["useradd", "--system", "--create-home", "--shell", "/bin/bash", name],
            f"--account stock needs root to create the user {name} (or use --account root)")
        pw = pwd.getpwnam(name)
    shadow = subprocess.run(["getent", "shadow", name], capture_output=True, text=True).stdout.split(":")
    if len(shadow) > 1 and shadow[1].startswith("!"):
        run(["usermod", "-p", "*", name], f"unlocking {name} for key logins")
    return pw


def give(paths: Iterable[Path], owner: pwd.struct_passwd | None) -> None:
    """Give spool entries to the login account (a real spool belongs to cyrus, not root)."""
    if owner is None:
        return
    for path in paths:
        os.lchown(path, owner.pw_uid, owner.pw_gid)


def tree(root: Path) -> Iterable[Path]:
    """``root`` and every directory and file below it."""
    yield root
    for dirpath, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            yield Path(dirpath) / name


def mounts_below(top: Path) -> list[Path]:
    """Mount points at or below ``top``, deepest first (a killed earlier run may have left some)."""
    top = top.resolve()
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        raw = line.split()[1]
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
        if point == top or top in point.parents:
            points.append(point)
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def unmount(point: Path) -> None:
    """Unmount one destination filesystem; ``mount -o loop`` frees its loop device with it."""
    r = subprocess.run(["umount", str(point)], capture_output=True, text=True)
    if r.returncode:
        print(f"bench: umount {point}: {r.stderr.strip()}; detaching it lazily", file=sys.stderr)
        subprocess.run(["umount", "--lazy", str(point)], check=False)


class Destinations:
    """Each tool's destination: a fresh loop-mounted ext4, or a plain directory when that cannot be had.

    A fresh filesystem per tool, made just before its first copy, gives both
    tools the same empty ext4 with no recently deleted inodes to skip.
    """

    def __init__(self, work: Path, image_size: int, cleanup: contextlib.ExitStack) -> None:
        self.work, self.image_size, self.cleanup = work, image_size, cleanup
        self.mode = "ext4-loop"
        self.fallback_reason = ""
        self.made = 0
        if os.geteuid() != 0:
            self._fall_back("not root")
        elif not shutil.which("mkfs.ext4"):
            self._fall_back("no mkfs.ext4")
        elif not Path("/dev/loop-control").exists():
            self._fall_back("no loop device (/dev/loop-control)")
        else:
            print(f"destinations: a fresh ext4 per tool, {image_size / GiB:.1f} GiB loop-mounted image "
                  f"under {work}, made just before its first copy")

    def _fall_back(self, reason: str) -> None:
        self.mode, self.fallback_reason = "plain-dir", reason
        print(f"destinations: PLAIN DIRECTORIES under {self.work} ({reason}): NOT isolated, the first copies "
              "may also measure the filesystem's recent deletions", flush=True)

    def fresh(self, name: str) -> Path:
        """An empty place for ``name``'s destination, with earlier writes flushed so neither tool pays them."""
        top = self.work / f"dest-{name}"
        top.mkdir()
        if self.mode == "ext4-loop":
            try:
                self._mount(top, name)
            except subprocess.CalledProcessError as error:
                if self.made:  # one tool on a fresh filesystem and the other not: not comparable
                    raise SystemExit(f"bench: {' '.join(error.cmd)}: {error.stderr.strip()}") from None
                self._fall_back(f"loop mount failed: {error.stderr.strip() or error}")
        self.made += 1
        os.sync()
        return top

    def _mount(self, top: Path, name: str) -> None:
        image = self.work / f"dest-{name}.img"
        for cmd in (["truncate", "-s", str(self.image_size), str(image)],
                    ["mkfs.ext4", "-q", "-F", str(image)],
                    ["mount", "-o", "loop", str(image), str(top)]):
            subprocess.run(cmd, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        self.cleanup.callback(lambda: top.is_mount() and unmount(top))

    def discard(self, name: str) -> None:
        """Drop ``name``'s destination and its cached pages: the runs after it measure without them."""
        top = self.work / f"dest-{name}"
        if top.is_mount():
            unmount(top)
            (self.work / f"dest-{name}.img").unlink()
        shutil.rmtree(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--mailboxes", type=int, default=2_000)
    parser.add_argument("--workdir", default=os.environ.get("SPOOLMIG_BENCH_DIR", "/tmp/spoolmig-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--config-users", type=int, default=20_000, metavar="N",
                        help="after the final pass, add seen, subscription and quota files of N more users "
                             "to the configdirectory (a big server's) and measure again (0: skip)")
    parser.add_argument("--account", choices=("root", "stock"), default="stock",
                        help=f"ssh login of both tools: stock = system user {BENCH_USER} with a stock "
                             "Debian home (default); root = root with this machine's ~/.bashrc")
    args = parser.parse_args()
    # spoolmig as an installed copy would run: with its bytecode compiled (this environment sets
    # PYTHONDONTWRITEBYTECODE, and an editable install never compiles it).
    run([sys.executable, "-m", "compileall", "-q", str(REPO / "spoolmig")], "compiling spoolmig")

    work = Path(args.workdir)
    for point in mounts_below(work):
        unmount(point)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    owner = ensure_account(BENCH_USER) if args.account == "stock" else None
    login = owner.pw_name if owner else "root"
    if owner:
        work.chmod(0o755)  # the account reaches the spool and the sshd's authorized_keys through it
    users = max(1, args.mailboxes // 4)
    t = time.perf_counter()
    server = SyntheticServer(work / "source")
    server.populate(users=users, folders_per_user=3, messages=args.messages)
    give(tree(server.root), owner)
    made = time.monotonic()  # the spool's last change (ctimes: the chown)
    files = sum(1 for _ in server.files())
    size = sum(p.lstat().st_size for p in server.files())
    print(f"spool: {len(server.mailboxes)} mailboxes, {files} files, {size / 2**30:.2f} GiB "
          f"(generated in {time.perf_counter() - t:.0f} s)")
    print(f"account: {login} (--account {args.account}"
          + (": stock /etc/skel home, owns the spool)" if owner else ": this machine's root ~/.bashrc)"))

    results: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as cleanup:
        dests = Destinations(work, 2 * size + GiB, cleanup)
        sshd = cleanup.enter_context(running_sshd(work / "sshd", user=login))
        src = server.root
        ssh = (f"ssh -p {sshd.port} -i {sshd.identity_file} -o UserKnownHostsFile={sshd.known_hosts} "
               "-o StrictHostKeyChecking=yes -o BatchMode=yes")
        login_cost = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([*ssh.split(), f"{sshd.user}@{sshd.host}", "true"], check=True)
            login_cost.append(time.perf_counter() - t)
        ssh_true = statistics.median(login_cost)
        print(f"ssh {sshd.user}@{sshd.host} true: {ssh_true:.3f} s (median of 3): connection and login shell "
              "start-up, paid by every remote command of either tool", flush=True)
        remote = [f"{sshd.user}@{sshd.host}:{src}{p}" for p in (*server.partitions.values(),
                                                                   server.configdirectory)]
        rsync_dest = work / "dest-rsync" / "rsync"

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
            f'path = "{work / "dest-spoolmig" / "mirror"}"\n'
        )

        def spoolmig(*extra: str) -> tuple[float, int]:
            return timed([SPOOLMIG, "mirror", "-q", "--config", str(config), *extra], ok=(0, 1))

        def measure(label: str, rs: tuple[float, int], sm: tuple[float, int]) -> None:
            results[label] = {"rsync_s": rs[0], "spoolmig_s": sm[0], "ratio": sm[0] / rs[0],
                              "spoolmig_maxrss_mb": sm[1] / 1024, "rsync_maxrss_mb": rs[1] / 1024}
            print(f"{label:<28} rsync {rs[0]:8.2f} s   spoolmig {sm[0]:8.2f} s   "
                  f"ratio {sm[0] / rs[0]:5.2f}   peak memory spoolmig {sm[1] / 1024:6.1f} MB"
                  f" rsync {rs[1] / 1024:6.1f} MB", flush=True)

        def then_sync() -> float:
            t = time.perf_counter()
            os.sync()
            return time.perf_counter() - t

        def aged(since: float, what: str) -> None:
            """Wait until changes made at ``since`` (monotonic) are AGE_S old (see the module's docstring)."""
            left = since + AGE_S - time.monotonic()
            if left > 0:
                print(f"waiting {left:.0f} s: {what} {AGE_S} s old before spoolmig's pass", flush=True)
                time.sleep(left)

        def no_change(label: str) -> None:
            runs_r = [rsync() for _ in range(3)]
            runs_s = [spoolmig() for _ in range(3)]
            measure(label, (statistics.median(r[0] for r in runs_r), max(r[1] for r in runs_r)),
                    (statistics.median(r[0] for r in runs_s), max(r[1] for r in runs_s)))

        def live_changes(delivered: int, expunged: int, flagged: int) -> None:
            give(server.deliver(max(1, delivered)), owner)
            server.expunge(max(1, expunged))
            server.flag_change(max(1, flagged))

        dests.fresh("rsync")
        rsync_dest.mkdir()
        caches = level_caches(src)
        print(f"page cache: {caches}", flush=True)
        first_rsync = rsync()
        rsync_sync = then_sync()
        native_dest = dests.fresh("native") / "native"
        native_dest.mkdir()
        level_caches(src)
        trees = " ".join(shlex.quote(f"{src}{p}".lstrip("/"))
                         for p in (*server.partitions.values(), server.configdirectory))
        first_native = timed(["bash", "-o", "pipefail", "-c",
                              f"{ssh} -c aes128-gcm@openssh.com {sshd.user}@{sshd.host} "
                              + shlex.quote(f"tar -C / -cf - {trees}")
                              + f" | tar -xf - -C {shlex.quote(str(native_dest))}"])
        native_sync = then_sync()
        dests.discard("native")
        dests.fresh("spoolmig")
        aged(made, "the spool")
        level_caches(src)
        first_spoolmig = spoolmig()
        spoolmig_sync = then_sync()
        measure("first full copy", first_rsync, first_spoolmig)
        # spoolmig's pass ends with its files on disk (a syncfs per batch); rsync's leaves them to the
        # kernel's writeback. Shown beside the ratio above, not instead of it: the copies as durable.
        measure("first copy, then sync", (first_rsync[0] + rsync_sync, first_rsync[1]),
                (first_spoolmig[0] + spoolmig_sync, first_spoolmig[1]))
        for label, native, rs, what in (
                ("floor: ssh | tar -x", first_native[0], first_rsync[0],
                 "a copy in C, no state, nothing synced: what the first copy's ratio can reach"),
                ("floor, then sync", first_native[0] + native_sync, first_rsync[0] + rsync_sync,
                 "both copies followed by a sync")):
            results[label] = {"rsync_s": rs, "native_s": native, "ratio": native / rs}
            print(f"{label:<28} rsync {rs:8.2f} s   ssh|tar  {native:8.2f} s   ratio {native / rs:5.2f}   ({what})",
                  flush=True)
        no_change("no-change pass (median/3)")
        new = max(1, args.messages // 1000)
        live_changes(new, new // 10, new // 4)
        measure(f"after +{new} msgs, expunges", rsync(), spoolmig())
        live_changes(new // 2, new // 20, new // 4)
        measure("final pass (--checksum)", rsync("--checksum"), spoolmig("--final"))
        if args.config_users:
            # A big server's configdirectory (seen, subscription and quota files change in place,
            # so every pass stats each one), aged like the spool before spoolmig copies it.
            conf = server.path(server.configdirectory)
            server.add_config_users(args.config_users)
            give(tree(conf), owner)
            made_config = time.monotonic()
            copy_rsync = rsync()
            aged(made_config, "the new configdirectory files")
            measure(f"copy of {3 * args.config_users} config files", copy_rsync, spoolmig())
            no_change("big config, no change (m/3)")
            live_changes(new, new // 10, new // 4)
            measure(f"big config, +{new} msgs", rsync(), spoolmig())

    print(json.dumps({"messages": args.messages, "config_users": args.config_users,
                      "mailboxes": len(server.mailboxes), "files": files,
                      "bytes": size, "cpus": os.cpu_count(), "account": args.account, "ssh_user": login,
                      "ssh_true_s": ssh_true, "destinations": dests.mode, "page_cache": caches,
                      **({"destinations_fallback": dests.fallback_reason} if dests.fallback_reason else {}),
                      "results": results}, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
