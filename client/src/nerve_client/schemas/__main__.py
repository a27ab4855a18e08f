"""`python -m nerve_client.schemas [DIR]`: write the JSON Schemas again (default: beside this
module, i.e. into the source tree of an editable install)."""

from __future__ import annotations

import sys
from pathlib import Path

from nerve_client.schemas import write


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: python -m nerve_client.schemas [DIR]", file=sys.stderr)
        return 2
    directory = Path(argv[0]) if argv else Path(__file__).resolve().parent
    for path in write(directory):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
