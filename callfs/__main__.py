import sys

from callfs.cli import main

sys.exit(main())
