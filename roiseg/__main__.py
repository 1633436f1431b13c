"""``python -m roiseg ...`` (also what ``torchrun -m roiseg train`` runs)."""

import sys

from roiseg.cli import main

sys.exit(main())
