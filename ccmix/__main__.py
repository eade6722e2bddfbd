"""``python -m ccmix``: the command line (see :mod:`ccmix.cli`).

``ccmix.cli`` imports nothing heavy at its top and ``main`` installs the SIGINT/SIGTERM handlers
first, so a signal while torch is still loading ends in one line too.
"""

import sys

from ccmix.cli import main

if __name__ == "__main__":
    sys.exit(main())
