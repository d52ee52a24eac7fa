"""Evaluate a trained run with the driving metrics: ``python enjoy.py logs/td3/LiteScenario0-v0_1`` (see ``--help``)."""

import sys

from sb3_av.zoo.enjoy import main

if __name__ == "__main__":
    sys.exit(main())
