import sys

from .cli.main import main

if __name__ == "__main__":  # not when a spawned worker process (bench exports) imports it
    sys.exit(main())
