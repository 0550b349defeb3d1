"""`ftgen bench eval` from a source checkout: `python benchmarks/bench_eval.py [OPTIONS]` (code: ftgen.bench)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ftgen.cli import main

    sys.argv = ["ftgen", "bench", "eval", *sys.argv[1:]]
    main()
