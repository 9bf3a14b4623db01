"""``python -m mediflow`` is the same as the ``mediflow`` command."""

import sys

from mediflow.cli import main

sys.exit(main())
