"""Where escrow's WIT is, for building components with componentize-py."""

import os


def wit_dir():
    """The directory holding escrow's WIT (`escrow.wit`), for
    `componentize-py -d`: the copy an installed `escrow-guest` carries, or,
    in a checkout of escrow, its `wit/`."""
    here = os.path.dirname(os.path.abspath(__file__))
    bundled = os.path.join(here, "wit")
    if os.path.isfile(os.path.join(bundled, "escrow.wit")):
        return bundled
    return os.path.normpath(os.path.join(here, "..", "..", "..", "wit"))
