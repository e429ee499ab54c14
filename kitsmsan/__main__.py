"""``python -m kitsmsan ...`` (also what ``torchrun -m kitsmsan train ...`` runs)."""

import sys

from kitsmsan.cli import main

if __name__ == "__main__":
    sys.exit(main())
