"""spoolmig: move a Cyrus IMAP server to a new machine at the filesystem level.

Importing the package has no side effects; the command line lives in
:mod:`spoolmig.cli`.
"""

__version__ = "0.1.0"
