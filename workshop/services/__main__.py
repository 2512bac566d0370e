"""``python -m workshop.services up|down|status|url``: see workshop/services/cli.py."""

import sys

from workshop.services.cli import main

sys.exit(main())
