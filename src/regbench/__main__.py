"""``python -m regbench``: the same CLI as the ``regbench`` entry point."""

from regbench.cli import main

raise SystemExit(main())
