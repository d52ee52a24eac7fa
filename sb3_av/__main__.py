"""``python -m sb3_av train | evaluate | check-logs | plot``: the ``sb3-av`` command (:mod:`sb3_av.cli`)."""

import sys

from sb3_av.cli import main

if __name__ == "__main__":
    sys.exit(main())
