"""The frozen app's entry point: what `mixdesk` runs inside the PyInstaller bundle."""

import multiprocessing
import sys

from mixdesk.app.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # torch data loaders and hf tokenizers may fork workers
    sys.exit(main())
