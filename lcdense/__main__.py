"""``python -m lcdense`` (what ``torchrun -m lcdense`` starts on every rank)."""
import sys

from .cli import main

sys.exit(main())
