"""`python -m escrow_guest wit`: prints the directory of escrow's WIT, for

    componentize-py -d "$(python -m escrow_guest wit)" -w plugin componentize app -o app.wasm
"""

import sys

from escrow_guest.paths import wit_dir

USAGE = "usage: python -m escrow_guest wit   (prints the directory of escrow's WIT)"

if sys.argv[1:] == ["wit"]:
    print(wit_dir())
else:
    sys.exit(USAGE)
