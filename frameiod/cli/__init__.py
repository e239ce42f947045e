"""The ``frameiod`` command, one module per command group."""
