"""`python -m projected_grpo.cli ...` = `pgrpo ...` (the sweep starts its child processes this way)."""

import sys

from projected_grpo.cli import main

sys.exit(main())
