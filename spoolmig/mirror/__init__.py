"""Stage 2: the replica of the source and its SQLite state; one pass at a time.

Modules, in the order data flows:

* :mod:`.trees`   which source directories are copied where, what is left out
                  (runtime state, staging, ``*.NEW``), path validation;
* :mod:`.state`   the SQLite state (files, directories, passes), WAL during a
                  pass, one plain file at rest;
* :mod:`.replica` writes into ``<mirror.path>`` without ever leaving it or
                  writing through a symlink; one sync per batch;
* :mod:`.worker`  one tree's pass: list, compare (set-based SQL), apply;
* :mod:`.fetcher` files into the replica, writer threads, one sync per batch
                  behind the fetching, rows recorded only once synced;
* :mod:`.helpers` a big fetch (a first copy) split over helper processes with
                  a connection each: one Python process cannot use a second core;
* :mod:`.engine`  a whole pass: lock, --final's quiet check, scan and apply
                  phases over ``--jobs`` threads, verification, the record;
* :mod:`.status`  history, churn and the final pass forecast (read-only);
* :mod:`.lock`, :mod:`.report`.

Decisions worth knowing:

* Symbolic links on the source are recreated as symbolic links, with the
  target stored byte for byte (sieve's ``defaultbc`` must survive); spoolmig
  never follows one, on the source (the transports use ``O_NOFOLLOW``) or in
  the replica (every directory component is ``lstat``-ed before a write, and a
  symlink found where a directory belongs is replaced by a directory). Later
  stages must treat them the same way: a link may point anywhere.
* Sockets, FIFOs and devices are skipped and reported.
* Names the source gives are checked (no ``..``, absolute path, NUL, empty
  component, or spoolmig's temporary prefix); a bad one is skipped and
  reported, never used.
* An incremental pass trusts the state about the replica; ``--full`` and
  ``--final`` compare the replica on disk with the state first.
* A message file that changes after it was opened is not detected by an
  incremental pass (Cyrus never rewrites one); metadata files are stat-ed by
  every pass, and their recorded mtime is the one from before the read, so a
  change during a read is copied by the next pass. ``--final`` re-stats them
  after copying, so its statement holds.
"""
