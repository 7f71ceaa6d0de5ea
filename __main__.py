"""``python -m mobilec`` is the same as the ``mobilec`` console script."""

import sys

from mobilec.cli import main

if __name__ == "__main__":
    sys.exit(main())
