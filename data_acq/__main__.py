import sys

from data_acq.cli import main

sys.exit(main())
