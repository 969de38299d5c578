import sys

from dist_srec.cli.main import main

sys.exit(main())
