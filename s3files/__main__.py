"""``python -m s3files`` is the ``s3files`` command (the daemon re-executes itself this way)."""

import sys

from s3files.cli import main

sys.exit(main())
