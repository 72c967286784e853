"""Side by side: this project's training step against the authors' PyTorch release.

Runs ``benchmarks/train_step.py`` and ``benchmarks/release_step.py`` for every size, each
in its own process, one after the other, and writes ``comparison.json`` and
``comparison.md`` (the side-by-side table of docs/performance.md) to ``--out-dir``:

    python benchmarks/compare_release.py --release-dir .release/CIFAR10 --out-dir /tmp/cmp

``--sizes`` lists ``method:T`` pairs (default: KD T=2, SASTC T=2, SASTC T=4); ``--remat``
adds a row of ours with ``config.remat`` for SASTC at the largest T; ``--loop METHOD:T`` also
times the real training loop at that size. With ``--bigmem-lock PATH`` the runs at T >= 4
hold an exclusive ``flock`` on PATH (a shared machine's lock for large-memory jobs).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def exclusive(lock_path: str | None):
    if not lock_path:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_json(command: list[str]) -> dict:
    """Run a benchmark process and parse the JSON line it prints last."""
    print("$", " ".join(command), file=sys.stderr, flush=True)
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(record), file=sys.stderr, flush=True)
    return record


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f} GiB"


def markdown(rows: list[dict], machine: str) -> str:
    lines = [
        f"Machine: {machine}",
        "",
        "| step (fp32) | release: s/step | release: img/s | release: CPU s/step "
        "| release: peak RSS | sastc-jax: s/step | sastc-jax: img/s | sastc-jax: CPU s/step "
        "| sastc-jax: peak RSS | speed-up (img/s) | CPU-time ratio | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours, release = row["ours"], row.get("release")
        name = f"{row['method'].upper()}, B={ours['batch']}, T={ours['time_steps']}"
        if ours.get("remat"):
            name += ", remat"
        cells = [name]
        if release:
            cells += [
                f"{release['step_seconds']:.1f}",
                f"{release['images_per_second']:.2f}",
                f"{release['cpu_seconds_per_step']:.1f}",
                gib(release["peak_rss_bytes"]),
            ]
        else:
            cells += ["-"] * 4
        cells += [
            f"{ours['step_seconds']:.1f}",
            f"{ours['images_per_second']:.2f}",
            f"{ours['cpu_seconds_per_step']:.1f}",
            gib(ours.get("peak_rss_bytes")),
        ]
        if release:
            cells += [
                f"{ours['images_per_second'] / release['images_per_second']:.2f}x",
                f"{ours['cpu_seconds_per_step'] / release['cpu_seconds_per_step']:.2f}x",
                f"{ours['peak_rss_bytes'] / release['peak_rss_bytes']:.2f}x",
            ]
        else:
            cells += ["-"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    by_size = {(r["method"], r["ours"]["time_steps"], r["ours"].get("remat")): r for r in rows}
    for steps in sorted({r["ours"]["time_steps"] for r in rows}):
        sastc, kd = by_size.get(("sastc", steps, False)), by_size.get(("kd", steps, False))
        if sastc and kd:
            lines.append("")
            lines.append(f"SASTC / KD at T={steps}, wall-clock (CPU time):")
            for name in ("ours", "release"):
                if sastc.get(name) and kd.get(name):
                    wall = sastc[name]["step_seconds"] / kd[name]["step_seconds"]
                    cpu = sastc[name]["cpu_seconds_per_step"] / kd[name]["cpu_seconds_per_step"]
                    label = "sastc-jax" if name == "ours" else "release"
                    lines[-1] += f" {label} {wall:.2f} ({cpu:.2f});"
    for row in rows:
        ours = row["ours"]
        if "loop_images_per_second" in ours:
            lines.append("")
            lines.append(
                f"Training loop ({row['method'].upper()}, T={ours['time_steps']}, mock "
                f"CIFAR-10): {ours['loop_images_per_second']:.2f} img/s against "
                f"{ours['images_per_second']:.2f} img/s for the isolated step "
                f"({100 * ours['loop_to_step_ratio']:.0f}%)."
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release-dir", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", default="kd:2,sastc:2,sastc:4")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--loop", default="", help="METHOD:T at which to time the loop too")
    parser.add_argument("--bigmem-lock", default=None)
    args = parser.parse_args(argv)
    sizes = [(m, int(t)) for m, t in (item.split(":") for item in args.sizes.split(","))]
    python = sys.executable
    common = ["--batch", str(args.batch), "--steps", str(args.steps)]
    common += ["--warmup", str(args.warmup), "--json"]
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    for method, steps in sizes:
        size = [*common, "--method", method, "--time-steps", str(steps)]
        with exclusive(args.bigmem_lock if steps >= 4 else None):
            ours_args = [*size, "--loop"] if args.loop == f"{method}:{steps}" else size
            ours = run_json([python, str(HERE / "train_step.py"), *ours_args])
            release_args = ["--release-dir", str(args.release_dir), *size]
            release = run_json([python, str(HERE / "release_step.py"), *release_args])
            rows.append({"method": method, "ours": ours, "release": release})
            write(args.out_dir, rows, started)  # what is measured so far survives a stop
            if args.remat and method == "sastc" and steps == max(t for _, t in sizes):
                remat = run_json([python, str(HERE / "train_step.py"), *size, "--remat"])
                rows.append({"method": method, "ours": remat, "release": release})
    print(write(args.out_dir, rows, started))


def write(out_dir: Path, rows: list[dict], started: str) -> str:
    """Write ``comparison.json`` and ``comparison.md``; returns the markdown."""
    with open("/proc/cpuinfo") as stream:
        model = next(line.split(":", 1)[1].strip() for line in stream if "model name" in line)
    machine = (
        f"{model}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
        f"run started {started} UTC, load average {os.getloadavg()[0]:.1f} when written"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(
        json.dumps({"machine": machine, "rows": rows}, indent=1)
    )
    table = markdown(rows, machine)
    (out_dir / "comparison.md").write_text(table)
    return table


if __name__ == "__main__":
    main()
