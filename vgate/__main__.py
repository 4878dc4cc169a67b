import sys

from vgate.cli import main

sys.exit(main())
