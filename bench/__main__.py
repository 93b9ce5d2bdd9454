"""``python -m bench``: run the benchmark and print one JSON object."""

from bench.run import main

raise SystemExit(main())
