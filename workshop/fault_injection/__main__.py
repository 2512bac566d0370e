"""``python -m workshop.fault_injection [options]``: see workshop/fault_injection/runner.py."""

import sys

from workshop.fault_injection.runner import main

sys.exit(main())
