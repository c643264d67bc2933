"""`foundry render` wall time for one recipe and for a folder of 100, and proof that rendering
never imports torch. Each run is a fresh `foundry` process, as in CI or a GitOps job."""

import statistics
import sys
import tempfile
from pathlib import Path

from bench.bench_cli import heavy_imports
from bench.report import measured, write

REPO = Path(__file__).resolve().parent.parent
STORE = "store.url=s3://foundry-store/runs"
GOALS = {1: 0.5, 100: 3.0}
RUNS = {1: 10, 100: 5}


def recipe_copies(folder: Path, count: int) -> None:
    """`count` distinct recipes: the demo under new names, each with its own slerp t, so each has its own plan."""
    folder.mkdir()
    text = (REPO / "recipes" / "tiny-demo.yml").read_text()
    for index in range(count):
        copy = text.replace("name: tiny-demo", f"name: bench-{index:03d}").replace("t: 0.4 ", f"t: {(index + 1) / (count + 1):.4f} ")
        (folder / f"bench-{index:03d}.yml").write_text(copy)


def main() -> None:
    from foundry.helm import engine

    foundry = str(Path(sys.executable).parent / "foundry")
    rows = []
    with tempfile.TemporaryDirectory(prefix="foundry-bench-render-") as scratch:
        folder = Path(scratch) / "recipes"
        recipe_copies(folder, 100)
        cases = {1: ["render", str(REPO / "recipes" / "tiny-demo.yml"), "--set", STORE], 100: ["render", str(folder), "--set", STORE, "-o", str(Path(scratch) / "out")]}
        for count, args in cases.items():
            runs = [measured([foundry, *args], cwd=REPO) for _ in range(RUNS[count])]
            times = sorted(seconds for seconds, _ in runs)
            median = statistics.median(times)
            rows.append({
                "recipes": count, "median_s": median, "max_s": times[-1], "goal_s": GOALS[count], "meets_goal": median < GOALS[count],
                "peak_rss_mib": max(rss for _, rss in runs) / 1024, "engine": engine().name,
                "heavy_imports": ",".join(heavy_imports(args)) or "none",
            })
    write("render", rows)


if __name__ == "__main__":
    main()
