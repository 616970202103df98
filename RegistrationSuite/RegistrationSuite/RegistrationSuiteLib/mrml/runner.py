"""Run a registration in a child process: nodes → temporary files → the CLI → files → nodes.

Why a process and not a thread: Slicer's main thread holds the Python GIL while its Qt event loop idles, so a
Python worker thread barely advances, and a crash in torch would end Slicer. The Slicer modules therefore run
exactly what the CLI runs (``PythonSlicer -m RegistrationSuiteLib <command> ... --progress-json``), as
SlicerElastix and SlicerANTs do. This module is Qt-free (``subprocess`` and files only); the widgets poll a
:class:`ChildRun` from a ``qt.QTimer``.

A method's logic only **declares** a run with a :class:`RunSpec`::

    spec = RunSpec(
        command="rigid-search",
        inputs=[NodeInput("--fixed", fixedNode, "volume", key="fixed"),
                NodeInput("--moving", movingNode, "volume", key="moving"),
                NodeInput("--fixed-mask", maskNode, "mask", reference="fixed")],   # None: option left out
        options=["--seed", "0", "--min-overlap", "0.5"],
        outputs=[NodeOutput("--output", "transform", node=outputTransformNode, key="transform",
                            name="GlobalRigidSearch transform", references=("fixed", "moving")),
                 NodeOutput("--output-resampled", "volume", node=outputVolumeNode, reference="fixed")],
        finish=None,          # optional finish(outcome): method-specific nodes (tables, copies)
        touches=[movingNode], # nodes that finish() may modify: restored if anything fails
    )
    run = ChildRun(spec); run.start()
    while run.poll() == RUNNING: ...          # or run.wait()
    run.outcome.result, run.outcome.nodes["transform"]

Input kinds (:data:`EXPORTERS` in :mod:`.runner_io`, extensible with :func:`register_exporter`):

- ``"volume"``: scalar volume node → ``.nrrd`` (LPS; the node's own geometry, parent transforms ignored;
  single axial slices become 2D images and their LPS z is remembered for the outputs);
- ``"color_volume"``: as ``"volume"``, but an RGB (multi-component) volume node becomes a vector ``.nrrd``
  (e.g. 2D histology slides);
- ``"mask"``: labelmap or segmentation node → binary ``.nrrd`` on the grid of input ``reference``;
- ``"labels"``: organ segmentation / labelmap / model node(s) → label ``.nrrd`` or labelled points ``.csv``
  (``params``: ``labels``, ``points_per_organ``, ``seed`` of :func:`~.points.registration_input_from_node`);
- ``"transform"``: transform node → ``.h5`` (LPS fixed → moving, e.g. an initial transform);
- ``"points"``: markups node → ``.csv`` (``x,y,z,label`` in LPS mm);
- ``"matrix"``: a numeric matrix (not a node) → ``.csv``.

Output kinds (:data:`IMPORTERS`, :func:`register_importer`): ``"transform"`` (linear node, or a grid node stored
as FromParent for displacement fields; registration references to the inputs named in ``references``),
``"volume"`` / ``"labelmap"`` (onto the grid of the file, 2D slices placed at the reference input's z) and
``"points"`` (a point list node, LPS file → RAS).

Guarantees: the temporary folder is private (``tempfile.mkdtemp``) and always removed; outputs are read into
nodes only after the child exited with 0; if reading back fails, created nodes are removed and passed output
nodes (and ``touches``) are restored (:class:`NodeRollback`); :meth:`ChildRun.poll` never raises: a failure
becomes :attr:`ChildRun.error`, one line plus the child's last stderr lines as details.
"""

from __future__ import annotations

import operator
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..cli.progress_lines import parse_progress_line
from ..errors import InputError
from .rollback import NodeRollback
from .runner_io import (  # noqa: F401 - register_exporter/register_importer are part of this module's API
    EXPORTERS,
    IMPORTERS,
    OUTPUT_SUFFIXES,
    entry_key,
    first_node,
    register_exporter,
    register_importer,
)

__all__ = [
    "CANCELLED", "FAILED", "NOT_STARTED", "RUNNING", "SUCCEEDED", "ChildRun", "NodeInput", "NodeOutput",
    "NodeRollback", "RunError", "RunOutcome", "RunSpec", "THREADED_COMMANDS", "child_environment",
    "python_executable", "register_exporter", "register_importer", "result_from_summary", "run_blocking",
]

#: :meth:`ChildRun.poll` states.
NOT_STARTED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "not started", "running", "succeeded", "failed", "cancelled"
#: Seconds between ``terminate()`` and ``kill()`` when a run is cancelled.
CANCEL_GRACE_SECONDS = 5.0
#: stderr lines kept as an error's details.
DETAIL_LINES = 20
#: CLI commands that take ``--threads`` (torch's CPU threads in the child); a test compares it with the CLI parser.
THREADED_COMMANDS = frozenset({"deformable", "histology", "partial-prereg", "train-histology"})


@dataclass
class NodeInput:
    """One input of a run: ``value`` (a node, a list of nodes, or a matrix) written as ``kind`` and passed as
    ``option <file>``. ``value=None`` leaves the option out (optional inputs)."""

    option: str
    value: object
    kind: str
    key: Optional[str] = None  # name other entries refer to (e.g. "fixed"); default: the option without "--"
    reference: Optional[str] = None  # key of the input whose grid a mask is sampled on
    params: dict = field(default_factory=dict)


@dataclass
class NodeOutput:
    """One output of a run: the child writes ``option <file>``; on success the file becomes node ``node``
    (``None``: a new node named ``name``), stored in ``outcome.nodes[key]``."""

    option: str
    kind: str
    node: object = None
    key: Optional[str] = None
    name: str = ""
    reference: Optional[str] = None  # input key giving the slice z of 2D outputs (and the scene)
    references: Sequence[str] = ()  # transforms: input keys of the fixed and moving nodes
    suffix: Optional[str] = None  # file suffix (default by kind)
    required: bool = True


@dataclass
class RunSpec:
    """What a method's logic declares; see the module docstring."""

    command: str
    inputs: List[NodeInput] = field(default_factory=list)
    options: List[str] = field(default_factory=list)
    outputs: List[NodeOutput] = field(default_factory=list)
    finish: Optional[Callable] = None
    touches: list = field(default_factory=list)
    scene: object = None  # default: the scene of the first input node


@dataclass
class RunOutcome:
    """What a successful run produced: the result (transform from the output file, the rest from the
    ``--json`` summary), the output nodes by key, and the exported inputs' metadata by key."""

    result: object
    nodes: Dict[str, object]
    inputs: Dict[str, dict]
    scene: object
    spec: RunSpec
    seconds: float = 0.0


@dataclass
class RunError:
    """A failed run: one line for the panel, the child's last stderr lines (or a traceback) as details."""

    message: str
    details: str = ""
    exit_code: Optional[int] = None

    def __str__(self) -> str:
        return self.message


# ----------------------------------------------------------------------------------------------- the child


def python_executable() -> str:
    """Slicer's Python launcher (``PythonSlicer``) when on PATH (inside Slicer), else this interpreter.

    Inside Slicer ``sys.executable`` is the application itself, not a Python interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def child_environment(base: Optional[dict] = None) -> dict:
    """``base`` (default: this process's environment) with the folder holding ``RegistrationSuiteLib`` first
    on PYTHONPATH. Inside Slicer pass ``slicer.util.startupEnvironment()`` (the environment Slicer was started
    in, as ``slicer.util.launchConsoleProcess`` does), not the application's own modified one."""
    env = dict(os.environ if base is None else base)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_parent] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def _whole_number_at_least_one(value, name: str) -> int:
    try:
        number = operator.index(value)  # ints and numpy integers; not floats or text
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise ValueError(f"{name}: expected a whole number >= 1 or None, got {value!r}")
    return int(number)


def result_from_summary(summary: dict, transform):
    """A :class:`~RegistrationSuiteLib.result.RegistrationResult` from the CLI's ``--json`` summary and the
    transform read from its output file (grids are not in the summary: ``None``)."""
    from ..result import RegistrationResult

    def number(key):
        value = summary.get(key)
        return float("nan") if value is None else float(value)

    return RegistrationResult(
        method=str(summary.get("method", "")), transform=transform, score=number("score"),
        confidence=number("confidence"), timings=dict(summary.get("timings") or {}),
        diagnostics=dict(summary.get("diagnostics") or {}), warnings=list(summary.get("warnings") or []),
    )


class ChildRun:
    """One registration in a child process, driven by polling (no threads).

    Args:
        spec: the :class:`RunSpec`.
        python: interpreter for the child (default :func:`python_executable`).
        temp_parent: where the private temporary folder is made (default: the system's).
        cancel_grace_seconds: time between ``terminate()`` and ``kill()`` after :meth:`cancel`.
        base_environment: the child's environment before PYTHONPATH is set (:func:`child_environment`).
        threads: torch's CPU threads in the child (``--threads``), passed only to the commands that take it
            (:data:`THREADED_COMMANDS`) and only when ``spec.options`` has no ``--threads`` of its own;
            ``None`` (default) leaves the command's own default. The Slicer widgets pass the user's setting
            (default: every core, :func:`~RegistrationSuiteLib.device.default_thread_count`).

    Attributes:
        state: one of ``NOT_STARTED``, ``RUNNING``, ``SUCCEEDED``, ``FAILED``, ``CANCELLED``.
        fraction, stage, message: the latest progress line.
        outcome: :class:`RunOutcome` once succeeded; error: :class:`RunError` once failed.
        folder: the temporary folder while it exists (``None`` afterwards).
        timings: seconds for ``export``, ``child`` (process start to exit) and ``import``.
    """

    def __init__(self, spec: RunSpec, python: Optional[str] = None, temp_parent=None,
                 cancel_grace_seconds: float = CANCEL_GRACE_SECONDS, base_environment: Optional[dict] = None,
                 threads: Optional[int] = None):
        self.threads = None if threads is None else _whole_number_at_least_one(threads, "threads")
        self.spec = spec
        self.base_environment = base_environment
        self.python = python or python_executable()
        self.temp_parent = temp_parent
        self.cancel_grace_seconds = cancel_grace_seconds
        self.state = NOT_STARTED
        self.fraction, self.stage, self.message = 0.0, "", ""
        self.outcome: Optional[RunOutcome] = None
        self.error: Optional[RunError] = None
        self.folder: Optional[Path] = None
        self.timings: Dict[str, float] = {}
        self._process = None
        self._stdout = self._stderr = None
        self._offset = 0
        self._partial = ""
        self._summary = None
        self._inputs: Dict[str, dict] = {}
        self._output_paths: Dict[str, Path] = {}
        self._cancel_time = None
        self._start_time = None

    # -- starting -----------------------------------------------------------------------------------------

    def command_line(self) -> List[str]:
        """The child's command line (valid after :meth:`start` exported the inputs)."""
        args = [self.python, "-m", "RegistrationSuiteLib", self.spec.command]
        for entry in self.spec.inputs:
            if entry_key(entry) in self._inputs and self._inputs[entry_key(entry)].get("path") is not None:
                args += [entry.option, str(self._inputs[entry_key(entry)]["path"])]
        for entry in self.spec.outputs:
            args += [entry.option, str(self._output_paths[entry_key(entry)])]
        options = [str(o) for o in self.spec.options]
        if self.threads is not None and self.spec.command in THREADED_COMMANDS and "--threads" not in options:
            options += ["--threads", str(self.threads)]
        return args + options + ["--progress-json"]

    def start(self) -> "ChildRun":
        """Export the inputs into a private temporary folder and start the child (returns at once).

        Raises:
            InputError (or the bridge's error) when an input cannot be exported; nothing is left behind.
        """
        if self.state != NOT_STARTED:
            raise RuntimeError("ChildRun.start: a run can be started once")
        began = time.monotonic()
        self.folder = Path(tempfile.mkdtemp(prefix="RegistrationSuite-", dir=self.temp_parent))
        try:
            self._export_inputs()
            self.timings["export"] = time.monotonic() - began
            self._stdout = open(self.folder / "stdout.txt", "wb")
            self._stderr = open(self.folder / "stderr.txt", "wb")
            self._start_time = time.monotonic()
            # Output to files, not pipes: nothing can block when a pipe fills, and polling needs no thread.
            extra = {}
            if os.name == "nt":  # no console window for the child (as slicer.util.launchConsoleProcess)
                extra["startupinfo"] = subprocess.STARTUPINFO(dwFlags=subprocess.STARTF_USESHOWWINDOW, wShowWindow=0)
            self._process = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL, stdout=self._stdout,
                                             stderr=self._stderr, env=child_environment(self.base_environment),
                                             cwd=str(self.folder), **extra)
        except BaseException:
            self._cleanup()
            raise
        self.state = RUNNING
        return self

    def _export_inputs(self) -> None:
        for entry in self.spec.inputs:
            if entry.value is None:
                continue
            exporter = EXPORTERS.get(entry.kind)
            if exporter is None:
                raise InputError(f"{entry.option}: unknown input kind '{entry.kind}' (known: {sorted(EXPORTERS)})")
            path, metadata = exporter(entry, self.folder, self._inputs)
            self._inputs[entry_key(entry)] = dict(metadata, path=path)
        outputs = self.folder / "outputs"
        outputs.mkdir()
        for entry in self.spec.outputs:
            if entry.kind not in IMPORTERS:
                raise InputError(f"{entry.option}: unknown output kind '{entry.kind}' (known: {sorted(IMPORTERS)})")
            suffix = entry.suffix or OUTPUT_SUFFIXES[entry.kind]
            self._output_paths[entry_key(entry)] = outputs / f"{entry_key(entry)}{suffix}"

    # -- polling -------------------------------------------------------------------------------------------

    def poll(self) -> str:
        """Read new progress lines, notice the end of the child and finish the run; returns :attr:`state`.
        Never raises: failures become :attr:`error`."""
        if self.state != RUNNING:
            return self.state
        try:
            self._read_stdout()
            code = self._process.poll()
            if code is None:
                if self._cancel_time is not None and time.monotonic() - self._cancel_time > self.cancel_grace_seconds:
                    self._process.kill()
                return self.state
            self.timings["child"] = time.monotonic() - self._start_time
            self._close_streams()
            self._read_stdout()
            if self._cancel_time is not None:
                self.state = CANCELLED
            elif code != 0:
                self._fail(self._exit_message(code), code)
            else:
                self._finish()
        except Exception as exc:  # noqa: BLE001 - a poll runs in a Qt timer slot: report, never raise
            self._fail(f"Registration failed: {type(exc).__name__}: {exc}", None, traceback.format_exc())
        finally:
            if self.state != RUNNING:
                self._cleanup()
        return self.state

    def _read_stdout(self) -> None:
        path = self.folder / "stdout.txt"
        with open(path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next poll
        for line in lines:
            kind, record = parse_progress_line(line)
            if kind == "progress":
                self.fraction, self.stage, self.message = record["fraction"], record["stage"], record["message"]
            elif kind == "summary":
                self._summary = record

    def stderr_tail(self, lines: int = DETAIL_LINES) -> str:
        """The child's last stderr lines (while the temporary folder exists)."""
        try:
            text = (self.folder / "stderr.txt").read_text(encoding="utf-8", errors="replace")
        except (OSError, TypeError):
            return ""
        return "\n".join(text.replace("\r", "\n").strip().splitlines()[-lines:])

    def _exit_message(self, code: int) -> str:
        last = [line for line in self.stderr_tail().splitlines() if line.strip()]
        what = f"'{self.spec.command}'"
        if code < 0:
            return f"The registration process {what} crashed (signal {-code})" + (f": {last[-1]}" if last else "")
        return (last[-1] if last else f"The registration process {what} exited with code {code}") + \
            f" (exit code {code})"

    def _fail(self, message: str, code, details: Optional[str] = None) -> None:
        tail = self.stderr_tail()
        self.error = RunError(message.splitlines()[0] if message else "Registration failed",
                              details if details is not None else tail, code)
        self.state = FAILED

    def _finish(self) -> None:
        """Read the outputs into nodes (only now: the child succeeded); restore everything if this fails."""
        began = time.monotonic()
        if self._summary is None:
            raise InputError("the registration process printed no JSON summary")
        scene = self.spec.scene or self._scene()
        transform_path = next((self._output_paths[entry_key(e)] for e in self.spec.outputs
                               if e.kind == "transform"), None)
        from ..io import read_transform

        transform = read_transform(transform_path) if transform_path is not None else None
        outcome = RunOutcome(result_from_summary(self._summary, transform), {}, self._inputs, scene, self.spec)
        passed = [e.node for e in self.spec.outputs] + list(self.spec.touches)
        rollback = NodeRollback(scene, passed)
        try:
            for entry in self.spec.outputs:
                path = self._output_paths[entry_key(entry)]
                if not path.exists():
                    if entry.required:
                        raise InputError(f"{entry.option}: the registration process wrote no file")
                    continue
                node = IMPORTERS[entry.kind](entry, path, outcome)
                if entry.node is None:
                    rollback.created(node)
                outcome.nodes[entry_key(entry)] = node
            if self.spec.finish is not None:
                self.spec.finish(outcome, rollback)
        except BaseException:
            rollback.restore()
            raise
        self.timings["import"] = time.monotonic() - began
        outcome.seconds = sum(self.timings.values())
        self.outcome = outcome
        self.state = SUCCEEDED

    def _scene(self):
        for entry in self.spec.inputs:
            node = first_node(entry.value) if entry.value is not None else None
            if node is not None and hasattr(node, "GetScene") and node.GetScene() is not None:
                return node.GetScene()
        raise InputError("inputs: expected at least one input node that is in a scene")

    # -- cancelling, waiting, cleaning ---------------------------------------------------------------------

    def cancel(self) -> None:
        """Terminate the child (then :meth:`poll` kills it after the grace period); nothing is written to
        the scene. The run ends as ``CANCELLED`` at the next poll after the child exited."""
        if self.state == RUNNING and self._cancel_time is None:
            self._cancel_time = time.monotonic()
            self._process.terminate()

    @property
    def cancel_requested(self) -> bool:
        """``True`` once :meth:`cancel` (or :meth:`abandon`) was called."""
        return self._cancel_time is not None

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> str:
        """Poll until the run ends (scripts, tests); returns :attr:`state` (still ``RUNNING`` on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() == RUNNING and (deadline is None or time.monotonic() < deadline):
            time.sleep(interval)
        return self.state

    def abandon(self) -> None:
        """Stop the child at once and remove the temporary folder (the widget or scene goes away)."""
        if self.state == RUNNING:
            self._cancel_time = time.monotonic()
            self._process.kill()
            self._process.wait()
            self.state = CANCELLED
        self._cleanup()

    def elapsed_seconds(self) -> float:
        return 0.0 if self._start_time is None else time.monotonic() - self._start_time

    def _close_streams(self) -> None:
        for stream in (self._stdout, self._stderr):
            if stream is not None and not stream.closed:
                stream.close()

    def _cleanup(self) -> None:
        self._close_streams()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def run_blocking(spec: RunSpec, progress=None, timeout: Optional[float] = None, **kwargs) -> RunOutcome:
    """Run ``spec`` in a child process and wait (scripts, benchmarks); raises on failure.

    Args:
        progress: optional ``progress(fraction, message)`` called at each poll.

    Raises:
        RegistrationFailed: the child failed (the message is :class:`RunError`'s one line);
        RegistrationCancelled: the run was cancelled.
    """
    from ..errors import RegistrationCancelled, RegistrationFailed

    run = ChildRun(spec, **kwargs).start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while run.poll() == RUNNING:
        if progress is not None:
            progress(run.fraction, run.message)
        if deadline is not None and time.monotonic() > deadline:
            run.abandon()
            raise RegistrationCancelled(f"{spec.command}: no result within {timeout:g} s")
        time.sleep(0.05)
    if run.state == FAILED:
        raise RegistrationFailed(run.error.message)
    if run.state == CANCELLED:
        raise RegistrationCancelled("registration cancelled")
    return run.outcome
