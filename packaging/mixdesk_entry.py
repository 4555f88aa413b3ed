"""The frozen app's entry point: what `mixdesk` runs inside the PyInstaller bundle.

With no arguments it opens the window, so that double-clicking the program (the macOS
.app, the Windows shortcut, `mixdesk` in a file manager) starts the app rather than
printing the command line's usage.
"""

import multiprocessing
import sys

from mixdesk.app.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # torch data loaders and hf tokenizers may fork workers
    # macOS before 10.9 passed a process serial number when Finder started an app
    args = [arg for arg in sys.argv[1:] if not arg.startswith("-psn_")]
    sys.exit(main(args or ["gui"]))
