"""A synthetic Cyrus 2.x server tree, for tests, benchmarks and the demo.

It lays out what a live Cyrus 2.3 server keeps on disk, under a folder that
stands for the server's ``/``: partitions with hashed mailbox directories,
``<uid>.`` message files, ``cyrus.header``/``cyrus.index``/``cyrus.cache``,
and a configdirectory with per-user seen/sub files, quota files, a sievedir,
runtime clutter a migration must *not* copy (socket/, proc/, db/, deliver.db)
and a ``mailboxes.db``. It also simulates the activity of a live server
between two mirror passes (deliveries, expunges, flag changes, new, deleted
and renamed mailboxes), because that is what incremental passes are
measured against.

The message files and directory structure follow Cyrus exactly (research
§9); the metadata files are well-formed headers of the right kind but are
not meant as format fixtures — those come from Cyrus's own tools
(scripts/make-fixtures).
"""

from __future__ import annotations

import os
import random
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HEADER_MAGIC = (
    b"\xa1\x02\x8b\x0dCyrus mailbox header\n"
    b'"The best thing about this system was that it had lots of goals."\n'
    b"\t--Jim Morris on Andrew\n"
)
INDEX_V10_HEADER = 96
INDEX_V10_RECORD = 88
FOLDERS = ("Sent", "Drafts", "Trash", "Archive", "Lists", "Lists.cyrus", "Projects", "Projects.2024")

_NOISE = random.Random(1).randbytes(1 << 16)


def hash_char(s: str) -> str:
    """Cyrus's basic dir_hash_c: first letter, lower-cased, or ``q``."""
    c = s[:1].lower()
    return c if "a" <= c <= "z" else "q"


def name_hash(name: str) -> int:
    """The 32-bit name hash of Cyrus 2.2's ``mailbox_make_uniqueid`` (deterministic)."""
    h = 0
    for b in name.encode():
        h = (h * 251 + b) % 2147484043
    return h & 0xFFFFFFFF


@dataclass
class Mailbox:
    name: str  # internal name, e.g. "user.bob.Sent"
    uidvalidity: int
    uids: list[int] = field(default_factory=list)
    last_uid: int = 0

    @property
    def owner(self) -> str | None:
        parts = self.name.split(".")
        return parts[1] if parts[0] == "user" and len(parts) > 1 else None

    def relative_dir(self) -> str:
        """Directory below the partition root (hashimapspool on, basic hash)."""
        after = self.name.split(".", 1)[1] if "." in self.name else self.name
        return f"{hash_char(after)}/{self.name.replace('.', '/')}"


class SyntheticServer:
    """One synthetic Cyrus 2.3 server under ``root`` (standing for its ``/``)."""

    configdirectory = "/var/lib/imap"
    sievedir = "/var/lib/imap/sieve"
    partitions = {"default": "/var/spool/imap", "second": "/var/spool/imap2"}

    def __init__(self, root: str | os.PathLike[str], *, seed: int = 7, min_size: int = 2048,
                 max_size: int = 50 * 1024) -> None:
        self.root = Path(root)
        self.rng = random.Random(seed)
        self.min_size, self.max_size = min_size, max_size
        self.mailboxes: dict[str, Mailbox] = {}
        self.partition_of: dict[str, str] = {}
        self.clock = 1_700_000_000

    # -- paths -------------------------------------------------------------
    def path(self, server_path: str) -> Path:
        return self.root / server_path.lstrip("/")

    def mailbox_dir(self, mbox: Mailbox) -> Path:
        return self.path(self.partitions[self.partition_of[mbox.name]]) / mbox.relative_dir()

    # -- building ------------------------------------------------------------
    def populate(self, *, users: int, folders_per_user: int = 3, messages: int, shared: int = 2) -> None:
        """Create users with folders, shared folders, and ``messages`` messages spread over them."""
        names: list[str] = []
        for i in range(users):
            user = f"user{i:05d}" if i % 7 else f"anna.{i}"  # some dotted... kept legal: '^' below
            user = user.replace(".", "^")
            names.append(f"user.{user}")
            for folder in FOLDERS[: folders_per_user]:
                names.append(f"user.{user}.{folder}")
        names += [f"shared.folder{i}" for i in range(shared)]
        names.append("user.odd name.with space")  # names with spaces exist in real spools
        for n, name in enumerate(names):
            self.create_mailbox(name, partition="second" if n % 5 == 4 else "default")
        boxes = list(self.mailboxes.values())
        for _ in range(messages):
            self._append(self.rng.choice(boxes))
        for mbox in boxes:
            self._write_metadata(mbox)
        self._write_config()

    def create_mailbox(self, name: str, *, partition: str = "default") -> Mailbox:
        self.clock += 1
        mbox = Mailbox(name, uidvalidity=self.clock)
        self.mailboxes[name] = mbox
        self.partition_of[name] = partition
        d = self.mailbox_dir(mbox)
        d.mkdir(parents=True, exist_ok=True)
        self._write_metadata(mbox)
        return mbox

    def _append(self, mbox: Mailbox) -> Path:
        mbox.last_uid += 1
        mbox.uids.append(mbox.last_uid)
        size = self.rng.randint(self.min_size, self.max_size)
        head = (f"From: sender{self.rng.randint(1, 999)}@example.org\r\nTo: {mbox.owner}@example.com\r\n"
                f"Subject: message {mbox.last_uid} in {mbox.name}\r\nMessage-ID: <{mbox.uidvalidity}."
                f"{mbox.last_uid}@synthetic>\r\n\r\n").encode()
        start = self.rng.randrange(len(_NOISE))
        body = (_NOISE[start:] + _NOISE)[: max(0, size - len(head))]
        path = self.mailbox_dir(mbox) / f"{mbox.last_uid}."
        with open(path, "wb") as f:
            f.write(head + body)
        return path

    def _write_metadata(self, mbox: Mailbox) -> None:
        d = self.mailbox_dir(mbox)
        owner = mbox.owner
        acl = f"{owner}\tlrswipcda\t" if owner else "anyone\tlrs\tgroup:staff\tlrswipcda\t"
        uniqueid = f"{name_hash(mbox.name):08x}{mbox.uidvalidity:08x}"
        quotaroot = f"user.{owner}" if owner else ""
        header = HEADER_MAGIC + f"{quotaroot}\t{uniqueid}\n\n{acl}\n".encode()
        (d / "cyrus.header").write_bytes(header)
        index = struct.pack(">IIIIIIII", 1, 0, 10, INDEX_V10_HEADER, INDEX_V10_RECORD, len(mbox.uids),
                            self.clock, mbox.last_uid)
        index += struct.pack(">QIII", 0, 0, mbox.uidvalidity, 0).ljust(INDEX_V10_HEADER - 32, b"\0")
        for uid in mbox.uids:
            index += struct.pack(">IIII", uid, self.clock, self.clock, 0).ljust(INDEX_V10_RECORD, b"\0")
        (d / "cyrus.index").write_bytes(index)
        (d / "cyrus.cache").write_bytes(struct.pack(">I", 1) + b"\0" * (32 * len(mbox.uids)))

    def _write_config(self) -> None:
        conf = self.path(self.configdirectory)
        for sub in ("db", "socket", "proc", "log", "user", "quota", "stage."):
            (conf / sub).mkdir(parents=True, exist_ok=True)
        (conf / "db" / "skipstamp").write_bytes(struct.pack(">I", self.clock))
        (conf / "deliver.db").write_bytes(b"runtime cache, never migrated\n")
        (conf / "socket" / "lmtp").write_bytes(b"")
        (conf / "proc" / "1234").write_bytes(b"imapd\n")
        (conf / "mailboxes.db").write_bytes(self.mailboxes_db())
        for mbox in self.mailboxes.values():
            owner = mbox.owner
            if owner and mbox.name == f"user.{owner}":
                udir = conf / "user" / hash_char(owner)
                udir.mkdir(exist_ok=True)
                (udir / f"{owner}.sub").write_bytes(
                    b"".join(f"{n}\t\n".encode() for n in sorted(self.mailboxes) if n.startswith(mbox.name))
                )
                (udir / f"{owner}.seen").write_bytes(b"seen database placeholder " + owner.encode())
                qdir = conf / "quota" / hash_char(owner)
                qdir.mkdir(exist_ok=True)
                (qdir / f"user.{owner}").write_bytes(b"123456\n100000\n")
                sdir = self.path(self.sievedir) / hash_char(owner) / owner
                sdir.mkdir(parents=True, exist_ok=True)
                (sdir / "default.script").write_bytes(b'require "fileinto";\nkeep;\n')
                link = sdir / "defaultbc"
                if not link.is_symlink():
                    (sdir / "default.bc").write_bytes(b"CyrSBytecode\0\0\0\x05")
                    os.symlink("default.bc", link)

    def mailboxes_db(self) -> bytes:
        """mailboxes.db in the 2.x value format, as a skiplist when spoolmig can write one."""
        records = []
        for name in sorted(self.mailboxes):
            owner = self.mailboxes[name].owner
            acl = f"{owner}\tlrswipcda\t" if owner else "anyone\tlrs\t"
            records.append((name.encode(), f"0 {self.partition_of[name]} {acl}".encode()))
        try:
            from spoolmig.formats import cyrusdb
        except ImportError:  # database layer not built yet: a flat file still mirrors
            return b"".join(k + b"\t" + v + b"\n" for k, v in records)
        return cyrusdb.build("skiplist", records)

    def add_config_users(self, count: int) -> list[Path]:
        """Seen, subscription and quota files of ``count`` more users, whose mailboxes are left out.

        The configdirectory of a big server (the files a migration copies
        that change in place) on a spool kept small: every pass stats them.
        """
        conf = self.path(self.configdirectory)
        made = []
        for i in range(count):
            owner = f"{chr(ord('a') + i % 26)}user{i:06d}"  # spread over the hash directories
            h = hash_char(owner)
            for sub, name, data in (("user", f"{owner}.seen", b"seen database placeholder"),
                                    ("user", f"{owner}.sub", f"user.{owner}\t\n".encode()),
                                    ("quota", f"user.{owner}", b"0\n100000\n")):
                directory = conf / sub / h
                directory.mkdir(parents=True, exist_ok=True)
                path = directory / name
                path.write_bytes(data)
                made.append(path)
        return made

    # -- live-server activity ---------------------------------------------------
    def deliver(self, count: int) -> list[Path]:
        """``count`` new messages into random mailboxes (index rewritten, dir mtime moves)."""
        boxes = list(self.mailboxes.values())
        touched: dict[str, Mailbox] = {}
        paths = []
        for _ in range(count):
            mbox = self.rng.choice(boxes)
            paths.append(self._append(mbox))
            touched[mbox.name] = mbox
        for mbox in touched.values():
            self._write_metadata(mbox)
        return paths

    def expunge(self, count: int) -> list[Path]:
        """Remove ``count`` messages (message file unlinked, index rewritten)."""
        removed = []
        boxes = [m for m in self.mailboxes.values() if m.uids]
        for _ in range(count):
            if not boxes:
                break
            mbox = self.rng.choice(boxes)
            uid = mbox.uids.pop(self.rng.randrange(len(mbox.uids)))
            path = self.mailbox_dir(mbox) / f"{uid}."
            path.unlink()
            removed.append(path)
            self._write_metadata(mbox)
            if not mbox.uids:
                boxes.remove(mbox)
        return removed

    def flag_change(self, count: int) -> list[Path]:
        """Rewrite ``count`` cyrus.index files in place: same size, same second (rsync's trap)."""
        changed = []
        for mbox in self.rng.sample(list(self.mailboxes.values()), min(count, len(self.mailboxes))):
            index = self.mailbox_dir(mbox) / "cyrus.index"
            st = index.stat()
            data = bytearray(index.read_bytes())
            data[0] = (data[0] + 1) % 256  # generation number moves, size does not
            with open(index, "r+b") as f:  # in place, as Cyrus 2.x does
                f.write(data)
            os.utime(index, ns=(st.st_atime_ns, st.st_mtime_ns))
            changed.append(index)
        return changed

    def delete_mailbox(self, name: str) -> None:
        mbox = self.mailboxes.pop(name)
        shutil.rmtree(self.mailbox_dir_by(name, mbox))
        del self.partition_of[name]
        self.path(self.configdirectory).joinpath("mailboxes.db").write_bytes(self.mailboxes_db())

    def mailbox_dir_by(self, name: str, mbox: Mailbox) -> Path:
        return self.path(self.partitions[self.partition_of[name]]) / mbox.relative_dir()

    def rename_mailbox(self, old: str, new: str) -> None:
        mbox = self.mailboxes.pop(old)
        part = self.partition_of.pop(old)
        src = self.path(self.partitions[part]) / mbox.relative_dir()
        mbox.name = new
        self.mailboxes[new] = mbox
        self.partition_of[new] = part
        dst = self.mailbox_dir(mbox)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
        self._write_metadata(mbox)
        self.path(self.configdirectory).joinpath("mailboxes.db").write_bytes(self.mailboxes_db())

    def files(self) -> Iterator[Path]:
        """Every file and symlink below the server root."""
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                yield Path(dirpath) / name

    def config_toml(self, mirror_path: str | os.PathLike[str], *, url: str | None = None,
                    extra_source: str = "") -> str:
        """A migration.toml mirroring this server (from its folder unless ``url`` is given)."""
        parts = ", ".join(f'{k} = "{v}"' for k, v in self.partitions.items())
        return (
            "[source]\n"
            f'url = "{url or self.root}"\n'
            f'configdirectory = "{self.configdirectory}"\n'
            f'sievedir = "{self.sievedir}"\n'
            f"partitions = {{ {parts} }}\n"
            "hashimapspool = true\n"
            f"{extra_source}"
            "\n[mirror]\n"
            f'path = "{mirror_path}"\n'
        )
