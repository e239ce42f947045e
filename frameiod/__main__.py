"""``python -m frameiod``: the same as the ``frameiod`` command."""

from frameiod.cli import main

raise SystemExit(main())
