"""Stage 1: list, stat and read the files of a local or SSH source.

paramiko is imported only in :mod:`spoolmig.transport.ssh`.
"""
