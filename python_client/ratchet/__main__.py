"""``python -m ratchet``: the same as the ``ratchet`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
