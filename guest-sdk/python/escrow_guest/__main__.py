"""`python -m escrow_guest wit`: prints the directory of escrow's WIT, for

    componentize-py -d "$(python -m escrow_guest wit)" -w plugin componentize app -o app.wasm
"""

import sys

from escrow_guest.paths import wit_dir

USAGE = "usage: python -m escrow_guest wit   (prints the directory of escrow's WIT)"


def main(args):
    """Runs the command `args`; its exit status."""
    if args == ["wit"]:
        print(wit_dir())
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
