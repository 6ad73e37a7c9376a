"""``python -m lcdense`` (what ``torchrun -m lcdense`` starts on every rank)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
