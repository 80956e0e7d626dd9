"""The demo migration behind scripts/demo (see there). Prints each command as typed."""

from __future__ import annotations

import filecmp
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from spoolgen import SyntheticServer  # noqa: E402
from sshd import running_sshd  # noqa: E402

BIN = REPO / ".venv" / "bin"


def say(text: str) -> None:
    print(f"\n\033[1m# {text}\033[0m" if sys.stdout.isatty() else f"\n# {text}", flush=True)


def run(*args: str, ok: tuple[int, ...] = (0,), head: int | None = None) -> str:
    """Run a spoolmig command as a person would type it, show its output."""
    print("$ spoolmig " + " ".join(shlex.quote(a) for a in args), flush=True)
    result = subprocess.run([str(BIN / "spoolmig"), *args], capture_output=True, text=True,
                            env=dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}"))
    lines = result.stdout.splitlines()
    shown = lines if head is None else lines[:head]
    print("\n".join(shown) + ("\n..." if len(shown) < len(lines) else ""), flush=True)
    if result.stderr.strip():
        print(result.stderr.rstrip(), flush=True)
    if result.returncode not in ok:
        raise SystemExit(f"demo: `spoolmig {args[0]}` exited {result.returncode}")
    return result.stdout


def compare_trees(source: Path, replica: Path) -> tuple[int, list[str]]:
    """Files compared byte for byte and the differences found."""
    count, diffs = 0, []
    for dirpath, _dirs, files in os.walk(source):
        for name in files:
            src = Path(dirpath) / name
            dst = replica / src.relative_to(source)
            count += 1
            if src.is_symlink():
                if not dst.is_symlink() or os.readlink(src) != os.readlink(dst):
                    diffs.append(str(dst))
            elif not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
                diffs.append(str(dst))
    return count, diffs


def main() -> None:
    work = Path(os.environ.get("SPOOLMIG_DEMO_DIR", "/tmp/spoolmig-demo"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    say("An old Cyrus 2.3 server: two partitions, hashed spool, 25 users, 1,500 messages")
    old = SyntheticServer(work / "oldhost", max_size=8 * 1024)
    old.populate(users=25, folders_per_user=3, messages=1500)
    print(f"{len(old.mailboxes)} mailboxes, {sum(1 for _ in old.files())} files under {old.root}")

    with running_sshd(work / "sshd") as sshd:
        say(f"It is reachable over SSH at {sshd.url}; its host key is pinned in a known_hosts file")
        config = work / "migration.toml"
        src = old.root
        config.write_text(
            "[source]\n"
            f'url = "{sshd.url}"\n'
            f'known_hosts = "{sshd.known_hosts}"\n'
            f'identity_file = "{sshd.identity_file}"\n'
            f'version = "2.3"\n'
            f'configdirectory = "{src}{old.configdirectory}"\n'
            f'sievedir = "{src}{old.sievedir}"\n'
            "partitions = { "
            + ", ".join(f'{k} = "{src}{v}"' for k, v in old.partitions.items())
            + " }\nhashimapspool = true\n\n[mirror]\n"
            f'path = "{work / "mirror"}"\n'
        )
        print(config.read_text())
        cfg = ("--config", str(config))

        say("Check the source before copying anything: version, layout, blockers")
        run("check", *cfg)

        say("First pass, while the old server stays in service")
        run("mirror", *cfg)

        say("A day of mail: 60 deliveries, 10 expunges, 12 flag changes, a renamed folder")
        old.deliver(60)
        old.expunge(10)
        old.flag_change(12)
        old.rename_mailbox("user.user00001.Sent", "user.user00001.Sent Items")

        say("Incremental pass: only changed directories are listed again")
        run("mirror", *cfg)
        run("status", *cfg)

        say("Maintenance window: Cyrus is stopped; the final pass trusts nothing")
        old.deliver(5)
        run("mirror", "--final", *cfg)

    mirror = work / "mirror"
    say("The replica is the old server's tree, file for file")
    count = 0
    for name, path in old.partitions.items():
        n, diffs = compare_trees(old.path(path), mirror / f"partition-{name}")
        count += n
        if diffs:
            raise SystemExit(f"demo: partition {name} differs: {diffs[:5]}")
    print(f"{count} spool files identical; per-user files, quotas and sieve scripts under {mirror}/config")

    say("Reading the mirrored databases without any Cyrus installation")
    mailboxes_db = str(mirror / "config" / "mailboxes.db")
    run("db", "show", mailboxes_db, head=5)
    run("db", "check", mailboxes_db)
    run("mboxlist", mailboxes_db, "--as", "3.6", head=12)
    header = next((mirror / "partition-default").rglob("cyrus.header"))
    run("inspect", str(header))
    run("inspect", str(header.with_name("cyrus.index")), head=20)
    say("Done. Work files are in " + str(work))


if __name__ == "__main__":
    main()
