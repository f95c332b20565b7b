import sys

from slidemil.cli import main

sys.exit(main())
