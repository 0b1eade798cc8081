"""python -m benchmarks: see docs/benchmarks.md and --help."""
from benchmarks.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
