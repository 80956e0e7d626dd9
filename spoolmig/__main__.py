"""``python -m spoolmig`` runs the command line."""

import sys

from spoolmig.cli import main

sys.exit(main())
