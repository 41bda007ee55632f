"""``python -m notifier_mock``: run the mock webhook receiver."""

import sys

from notifier_mock.cli import main

sys.exit(main())
