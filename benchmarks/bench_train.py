"""`ftgen bench train` from a source checkout: `python benchmarks/bench_train.py [OPTIONS]` (code: ftgen.bench)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ftgen.cli import main

    sys.argv = ["ftgen", "bench", "train", *sys.argv[1:]]
    main()
