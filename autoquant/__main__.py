from __future__ import annotations

from autoquant.cli import main

raise SystemExit(main())
