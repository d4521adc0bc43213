import sys

from ganrec_dist.operations.cli import main

sys.exit(main())
