import sys

from gptvae.cli import main

sys.exit(main())
