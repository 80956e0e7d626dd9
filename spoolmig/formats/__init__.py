"""Stage 3: bytes <-> records for every Cyrus on-disk format.

Each module implements the specification of the same stem in ``formats/``
at the top of the repository. Format code works on buffers, never on sockets.
"""
