"""Train a driving agent, rl-zoo style: ``python train.py --algo td3 --env LiteScenario0-v0`` (see ``--help``)."""

import sys

from sb3_av.zoo.train import main

if __name__ == "__main__":
    sys.exit(main())
