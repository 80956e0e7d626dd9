"""``spoolmig status``: pass history, churn, and a forecast of the final pass.

Read-only: the state is opened immutable (no lock, no -wal/-shm files), so
status can run while a pass does (it then sees the last finished passes).

The forecast is built from what passes measured, not from guesses about the
hardware:

* listing: the final pass lists everything, so the time of the last
  whole-tree listing (a first, ``--full`` or ``--final`` pass), scaled to
  today's number of entries;
* transfer: what changes between two passes (the churn rate times the usual
  interval between passes) plus every metadata file (``--final`` re-copies
  all of them), at the transfer rate passes achieved;
* verification: the local comparison the last ``--final``/``--full`` made,
  scaled likewise (or, without one, as long as the listing);
* plus the quiet check's wait.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from dataclasses import dataclass
from typing import Any

from spoolmig.errors import MirrorError
from spoolmig.mirror import state as st
from spoolmig.mirror.trees import CLS_META

#: Passes shown and used for rates.
RECENT = 10


@dataclass
class Status:
    passes: list[dict[str, Any]]
    churn: dict[str, float] | None
    forecast: dict[str, Any] | None
    replica: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"passes": self.passes, "churn": self.churn, "forecast": self.forecast, "replica": self.replica}


def read_status(mirror_path: str, *, quiet_wait: float = 2.0, retries: int = 3) -> Status:
    """The status of a replica; an empty status when no pass ever ran."""
    for attempt in range(retries):
        conn = st.open_readonly(mirror_path)
        if conn is None:
            return Status([], None, None, {"files": 0, "bytes": 0, "entries": 0, "metadata_bytes": 0})
        try:
            return _read(conn, quiet_wait)
        except sqlite3.DatabaseError as error:
            if attempt == retries - 1:
                raise MirrorError(f"{st.state_path(mirror_path)}: cannot read the mirror state ({error});"
                                  " a pass may be writing it, try again") from None
            time.sleep(0.5)
        finally:
            conn.close()
    raise AssertionError("unreachable")


def _read(conn: sqlite3.Connection, quiet_wait: float) -> Status:
    conn.row_factory = sqlite3.Row
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "passes" not in tables:
        return Status([], None, None, {"files": 0, "bytes": 0, "entries": 0, "metadata_bytes": 0})
    rows = [dict(r) for r in conn.execute("SELECT * FROM passes ORDER BY id DESC LIMIT ?", (RECENT * 3,))]
    rows.reverse()
    files, size, entries = conn.execute(
        "SELECT sum(kind = 'f'), coalesce(sum(CASE WHEN kind = 'f' THEN size END), 0), count(*)"
        " FROM files WHERE size >= 0").fetchone()
    meta = conn.execute(
        "SELECT coalesce(sum(size), 0) FROM files WHERE kind = 'f' AND size >= 0 AND cls > 0 AND cls = ?",
        (CLS_META,)).fetchone()[0]
    replica = {"files": int(files or 0), "bytes": int(size), "entries": int(entries), "metadata_bytes": int(meta)}
    passes = [_shown(r) for r in rows[-RECENT:]]
    churn = compute_churn(rows)
    forecast = compute_forecast(rows, churn, replica, quiet_wait)
    return Status(passes, churn, forecast, replica)


def _shown(r: dict[str, Any]) -> dict[str, Any]:
    duration = (r["ended"] - r["started"]) if r["ended"] else None
    out = {k: r[k] for k in ("id", "mode", "outcome", "files_new", "bytes_new", "files_changed", "bytes_changed",
                             "files_deleted", "bytes_deleted", "entries_listed", "dirs_relisted",
                             "files_changed_during", "errors", "bytes_fetched")}
    out["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r["started"]))
    out["duration_seconds"] = round(duration, 3) if duration is not None else None
    out["list_seconds"] = round(r["list_seconds"], 3)
    out["fetch_seconds"] = round(r["fetch_seconds"], 3)
    if r["outcome"] == "running" and r["ended"] is None:
        out["outcome"] = "running or killed"
    return out


def _finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["ended"] is not None and r["outcome"] in ("ok", "warnings", "differences")]


def compute_churn(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """New and changed files and bytes per hour, between consecutive finished passes.

    The first pass copies everything and is not churn; each later pass brings
    what changed since the start of the previous one.
    """
    done = _finished(rows)
    if len(done) < 2:
        return None
    pairs = list(zip(done, done[1:]))[-RECENT:]
    hours = sum(b["started"] - a["started"] for a, b in pairs) / 3600
    if hours <= 0:
        return None
    files = sum(b["files_new"] + b["files_changed"] for _, b in pairs)
    nbytes = sum(b["bytes_new"] + b["bytes_changed"] for _, b in pairs)
    deleted = sum(b["files_deleted"] for _, b in pairs)
    interval = statistics.median(b["started"] - a["started"] for a, b in pairs)
    return {"files_per_hour": files / hours, "bytes_per_hour": nbytes / hours,
            "deleted_files_per_hour": deleted / hours, "typical_interval_seconds": interval,
            "intervals": len(pairs)}


def compute_forecast(rows: list[dict[str, Any]], churn: dict[str, float] | None, replica: dict[str, int],
                     quiet_wait: float) -> dict[str, Any] | None:
    """Expected duration of ``spoolmig mirror --final`` run one usual interval after the last pass."""
    done = _finished(rows)
    if not done:
        return None
    walks = [r for r in done if r["mode"] in ("full", "final") or r is done[0]]
    walk = walks[-1]
    scale = replica["entries"] / walk["entries_listed"] if walk["entries_listed"] else 1.0
    listing = walk["list_seconds"] * scale
    moving = [r for r in done[-RECENT:] if r["fetch_seconds"] > 0 and r["bytes_fetched"] > 0]
    moved = sum(r["bytes_fetched"] for r in moving)
    rate = moved / sum(r["fetch_seconds"] for r in moving) if moving else None
    verifies = [r for r in done if r["mode"] in ("full", "final") and r["verify_seconds"] > 0]
    verify = verifies[-1]["verify_seconds"] * scale if verifies else listing
    delta = churn["bytes_per_hour"] * churn["typical_interval_seconds"] / 3600 if churn else 0.0
    transfer_bytes = delta + replica["metadata_bytes"]
    transfer = transfer_bytes / rate if rate else None
    incremental = [r["list_seconds"] for r in done[-RECENT:] if r["mode"] == "incremental" and r is not done[0]]
    cheap = statistics.median(incremental) if incremental else listing
    # Two cheap listings quiet_wait apart before, one after the pass.
    quiet = quiet_wait + 3 * cheap
    total = None if transfer is None else quiet + listing + transfer + verify
    return {
        "seconds": round(total, 1) if total is not None else None,
        "quiet_check_seconds": round(quiet, 2),
        "listing_seconds": round(listing, 2),
        "transfer_bytes": int(transfer_bytes),
        "transfer_seconds": round(transfer, 2) if transfer is not None else None,
        "transfer_rate_bytes_per_second": round(rate) if rate else None,
        "verify_seconds": round(verify, 2),
        "based_on_passes": len(done),
        "assumes": "the final pass runs one usual interval after the last pass",
    }
