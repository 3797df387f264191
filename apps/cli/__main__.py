"""``python -m apps.cli``: the ``rag`` command."""

import sys

from apps.cli import main

sys.exit(main())
