import sys

from dist_srec.cli import main

sys.exit(main())
