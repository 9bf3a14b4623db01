"""`mediflow pairs` sub-command(s). (Owned by the pairs stage; filled in by its issue.)"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to the top-level parser."""
