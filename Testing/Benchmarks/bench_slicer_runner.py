"""Per-run overhead of running a registration in a child process (what the Slicer modules' Apply does).

On the shipped sample (fixed T2, moving T1, 2 mm) with the global rigid search's default settings, CPU:

- **in-process**: ``GlobalRigidSearchLogic().register(...)`` in this process (torch already imported, as in a
  Slicer session where a method ran before);
- **child process**: ``ChildRun(GlobalRigidSearchLogic().run_spec(...))`` from slicer-core nodes, split into
  node export, the child's wall time (process start, imports, reading/writing files and the registration) and
  the read-back into nodes; the child's own registration time comes from its ``--json`` summary, so
  overhead = child-process total − the child's registration time.

Also measured alone: ``python -c "import RegistrationSuiteLib.methods.global_rigid.register"`` (process start +
imports of torch and the method). Writes the ``slicer_runner`` section of BENCHMARKS.md (medians over
``--repeats`` runs) and the raw numbers to ``Testing/Benchmarks/output/slicer_runner.json``.

Usage: ``nice -n 10 python Testing/Benchmarks/bench_slicer_runner.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import markdown_table, update_benchmarks_md

OUTPUT = Path(__file__).resolve().parent / "output"


def _import_seconds() -> float:
    from RegistrationSuiteLib.mrml.runner import child_environment, python_executable

    start = time.perf_counter()
    subprocess.run([python_executable(), "-c", "import RegistrationSuiteLib.methods.global_rigid.register"],
                   check=True, env=child_environment())
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the BENCHMARKS.md section from output/slicer_runner.json without measuring")
    args = parser.parse_args(argv)
    if args.render_only:
        record = json.loads((OUTPUT / "slicer_runner.json").read_text())
        return render(record)
    return render(measure(args.repeats))


def measure(repeats: int) -> dict:
    """Run the in-process and child-process registrations ``repeats`` times; returns the raw record."""

    import SimpleITK as sitk
    import slicer
    import torch  # noqa: F401  - imported before timing: the in-process figure excludes torch's import

    from RegistrationSuiteLib.methods.global_rigid.config import GlobalRigidConfig
    from RegistrationSuiteLib.mrml.logic import GlobalRigidSearchLogic
    from RegistrationSuiteLib.mrml.runner import SUCCEEDED, ChildRun
    from RegistrationSuiteLib.mrml.scene import create_headless_scene
    from RegistrationSuiteLib.mrml.volumes import volume_node_from_image
    from RegistrationSuiteLib.sample_data import sample_path

    scene = create_headless_scene()
    slicer.mrmlScene = scene
    fixed = volume_node_from_image(sitk.ReadImage(str(sample_path("T2"))), scene, "T2")
    moving = volume_node_from_image(sitk.ReadImage(str(sample_path("T1"))), scene, "T1")
    config = GlobalRigidConfig(device="cpu", seed=0)
    logic = GlobalRigidSearchLogic()
    runs = []
    for repeat in range(repeats):
        start = time.perf_counter()
        in_process = logic.register(fixed, moving, config)
        in_process_seconds = time.perf_counter() - start
        start = time.perf_counter()
        run = ChildRun(logic.run_spec(fixed, moving, config)).start()
        if run.wait() != SUCCEEDED:
            sys.exit(f"child run failed: {run.error}")
        total = time.perf_counter() - start
        method = float(run.outcome.result.timings["total"])
        runs.append({"in_process_s": in_process_seconds, "in_process_method_s": float(in_process.timings["total"]),
                     "child_total_s": total, "export_s": run.timings["export"], "child_wall_s": run.timings["child"],
                     "child_method_s": method, "import_s": run.timings["import"], "overhead_s": total - method,
                     "start_imports_io_s": run.timings["child"] - method})
        print(f"repeat {repeat + 1}: {json.dumps({k: round(v, 2) for k, v in runs[-1].items()})}", flush=True)
    import_alone = [_import_seconds() for _ in range(repeats)]
    OUTPUT.mkdir(exist_ok=True)
    record = {"runs": runs, "process_start_and_imports_s": import_alone, "load_average": os.getloadavg(),
              "cpu_count": os.cpu_count(), "sample": "fixed T2, moving T1 (2 mm), GlobalRigidConfig(device='cpu')"}
    (OUTPUT / "slicer_runner.json").write_text(json.dumps(record, indent=2))
    return record


def render(record: dict) -> int:
    """Write the ``slicer_runner`` section of BENCHMARKS.md from a measured record."""
    runs, import_alone = record["runs"], record["process_start_and_imports_s"]

    def med(key):
        return statistics.median(r[key] for r in runs)

    overheads = ", ".join(f"{r['overhead_s']:.1f}" for r in runs)
    rows = [
        ["in-process `register()` (torch already imported)", f"{med('in_process_s'):.1f}"],
        ["child process, total (Apply → nodes written)", f"{med('child_total_s'):.1f}"],
        ["… node export to temporary files", f"{med('export_s'):.2f}"],
        ["… child: process start, imports, file reading/writing", f"{med('start_imports_io_s'):.1f}"],
        ["… child: the registration itself (its `--json` timings)", f"{med('child_method_s'):.1f}"],
        ["… read back into nodes", f"{med('import_s'):.2f}"],
        ["**per-run overhead** (total − registration)", f"**{med('overhead_s'):.1f}**"],
        ["process start + `import` of torch and the method alone", f"{statistics.median(import_alone):.1f}"],
    ]
    load = ", ".join(f"{v:.1f}" for v in record["load_average"])
    body = (
        "## Child-process runs of the Slicer modules (`bench_slicer_runner.py`)\n\n"
        "What *Apply* costs on top of the registration: the modules run `python -m RegistrationSuiteLib "
        "rigid-search --progress-json` in a child process (issue 8). Shipped sample (fixed T2, moving T1, 2 mm), "
        f"global rigid search with default settings on the CPU, median of {len(runs)} runs per row (rows are "
        "separate medians, so they need not add up); nodes are slicer-core MRML nodes (no Slicer application).\n\n"
        + markdown_table(["stage", "seconds"], rows)
        + f"\n\nPer-run overhead of each run: {overheads} s. Machine: {record['cpu_count']} CPU cores shared with other jobs (load average {load} at the end of the "
        "run), so absolute times are noisy; the overhead is dominated by starting Python and importing torch. "
        "Raw numbers: `Testing/Benchmarks/output/slicer_runner.json`.\n"
    )
    update_benchmarks_md("slicer_runner", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
