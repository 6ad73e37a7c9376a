#!/usr/bin/env python
"""Benchmark LC-Block implementations against the baseline (same as ``lcdense bench``).

Usage: python scripts/bench_lc.py [--device cuda] [--E 1,8,32,128] [--rounds 5] [--out FILE.json]
"""
import sys

from lcdense.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
