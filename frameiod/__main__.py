"""``python -m frameiod``: the same as the ``frameiod`` command."""

from frameiod.cli.main import main

raise SystemExit(main())
