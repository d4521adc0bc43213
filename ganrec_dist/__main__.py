import sys

from ganrec_dist.cli import main

sys.exit(main())
