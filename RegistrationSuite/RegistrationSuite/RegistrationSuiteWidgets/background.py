"""Run long computations in a worker thread and poll them from the GUI thread.

Why a thread: the registration methods spend their time in torch/NumPy/SimpleITK calls that release the GIL,
so a Python ``threading.Thread`` keeps Slicer's event loop responsive without the start-up cost and data
copying of a subprocess. The price is a strict division of labour:

- the **worker** only computes: it receives in-memory images (converted from MRML nodes on the main thread
  beforehand) and returns a ``RegistrationResult``. It must not touch Qt widgets or the MRML scene;
- the **main thread** polls the worker with a ``qt.QTimer`` (progress bar, Cancel) and, when the worker has
  finished, creates/updates MRML nodes from its result.

Cancellation is cooperative: the worker receives ``cancel()``, which the core's ``Progress.report`` checks and
turns into ``RegistrationCancelled``.
"""

import logging
import threading
import time
import traceback

import qt
import slicer
from slicer.i18n import tr as _

from RegistrationSuiteLib.errors import RegistrationCancelled

from .torchsupport import ensureTorch


class BackgroundTask:
    """``function(progress, cancel)`` run in a daemon thread, observed from the main thread.

    Args:
        function: called in the worker thread as ``function(progress, cancel)`` where ``progress(fraction,
            message)`` records progress (fraction in [0, 1]) and ``cancel()`` returns ``True`` once
            :meth:`requestCancel` was called. Its return value becomes :attr:`result`; an exception it raises
            becomes :attr:`error` (with :attr:`errorTraceback`).
        onProgress: called on the main thread as ``onProgress(fraction, message)`` at every poll.
        onFinished: called once on the main thread as ``onFinished(task)`` after the worker has ended
            (successfully, with an error, or cancelled).
        intervalMs: polling period of the ``qt.QTimer``.
        name: thread name (shown by debuggers and in logs).
    """

    def __init__(self, function, onProgress=None, onFinished=None, intervalMs=100, name="RegistrationSuiteTask"):
        self._function = function
        self._onProgress = onProgress
        self._onFinished = onFinished
        self._lock = threading.Lock()
        self._cancelEvent = threading.Event()
        self._fraction = 0.0
        self._message = ""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._timer = qt.QTimer()
        self._timer.setInterval(int(intervalMs))
        self._timer.timeout.connect(self._poll)
        self._finishedReported = False
        self.result = None
        self.error = None
        self.errorTraceback = ""
        self.startTime = None
        self.stopTime = None

    # -- worker side (any thread) -------------------------------------------------------------------------

    def _run(self):
        try:
            self.result = self._function(self._report, self.isCancelRequested)
        except BaseException as error:  # anything, even SystemExit, is handed to the main thread to report
            self.error = error
            self.errorTraceback = traceback.format_exc()
        finally:
            self.stopTime = time.monotonic()

    def _report(self, fraction, message=""):
        with self._lock:
            self._fraction = min(max(float(fraction), 0.0), 1.0)
            self._message = str(message)

    def isCancelRequested(self):
        """``True`` once :meth:`requestCancel` was called (thread-safe)."""
        return self._cancelEvent.is_set()

    # -- main thread ----------------------------------------------------------------------------------------

    def start(self):
        """Start the worker and the polling timer."""
        self.startTime = time.monotonic()
        self._thread.start()
        self._timer.start()

    def requestCancel(self):
        """Ask the worker to stop at its next progress report; :attr:`onFinished` is still called."""
        self._cancelEvent.set()

    def progress(self):
        """The latest ``(fraction, message)`` reported by the worker."""
        with self._lock:
            return self._fraction, self._message

    def isRunning(self):
        return self._thread.is_alive()

    def elapsedSeconds(self):
        if self.startTime is None:
            return 0.0
        return (self.stopTime if self.stopTime is not None else time.monotonic()) - self.startTime

    def wait(self, timeout=None):
        """Block until the worker ends (tests and scripts); returns ``True`` if it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stopPolling(self):
        """Stop the timer without reporting (the widget is going away); the worker is asked to stop."""
        self.requestCancel()
        self._timer.stop()
        self._finishedReported = True

    def _poll(self):
        if self._onProgress is not None:
            self._onProgress(*self.progress())
        if self._thread.is_alive() or self._finishedReported:
            return
        self._timer.stop()
        self._finishedReported = True
        if self._onFinished is not None:
            self._onFinished(self)


def setApplyButtonRunning(button, running, applyText="Apply", cancelText="Cancel"):
    """Turn an Apply button into a Cancel button while a task runs, and back.

    The button stays enabled while running (so the user can cancel); its enabled state when idle is decided
    by the module's ``_checkCanApply``.
    """
    button.text = cancelText if running else applyText
    if running:
        button.enabled = True
        button.toolTip = "Stop the running registration (nothing is written to the scene)."


class BackgroundRunMixin:
    """Apply ↔ Cancel, progress and result handling shared by the modules' widgets.

    The widget provides ``self.logic`` (``prepareRun(parameterNode)`` on the main thread, ``computeRun(run,
    progress, cancel)`` in the worker), ``self.ui.applyButton`` / ``progressBar`` / ``resultsLabel``,
    ``self._parameterNode``, ``_checkCanApply()``, the class attribute ``runName`` (thread and log name) and
    ``_showResult(run, result, elapsedSeconds)``: main thread, writes the result into the scene and returns the
    results label's text.
    """

    runName = "RegistrationSuite"
    _task = None  # BackgroundTask while a registration runs
    _run = None  # the logic's prepared run of the running registration

    def onApplyButton(self) -> None:
        """Start a registration from the parameter node, or cancel the running one."""
        if self._task is not None:
            self._task.requestCancel()
            self.ui.resultsLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the registration."), waitCursor=True):
            self._startRun()

    def _startRun(self) -> None:
        if ensureTorch(askConfirmation=True) is None:
            return
        # Reads the parameter node (not the widgets) and copies the inputs: main thread, before the worker.
        run = self.logic.prepareRun(self._parameterNode)
        computeRun = self.logic.computeRun
        self._task = BackgroundTask(
            lambda progress, cancel: computeRun(run, progress=progress, cancel=cancel),
            onProgress=self._onProgress,
            onFinished=self._onFinished,
            name=self.runName,
        )
        self._run = run
        self.ui.resultsLabel.text = ""
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        setApplyButtonRunning(self.ui.applyButton, True)
        self._task.start()

    def _onProgress(self, fraction, message) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.format = "%p%  " + message.replace("%", "")

    def _onFinished(self, task) -> None:
        """Main thread: write the result into the scene, or report why there is none."""
        self._task = None
        run, self._run = self._run, None
        self.ui.progressBar.visible = False
        setApplyButtonRunning(self.ui.applyButton, False)
        self._checkCanApply()
        if isinstance(task.error, RegistrationCancelled):
            self.ui.resultsLabel.text = _("Cancelled: nothing was written to the scene.")
            return
        if task.error is not None:
            logging.error("%s failed:\n%s", self.runName, task.errorTraceback)
            self.ui.resultsLabel.text = _("Failed: {error}").format(error=task.error)
        with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
            if task.error is not None:
                raise task.error
            self.ui.resultsLabel.text = self._showResult(run, task.result, task.elapsedSeconds())

    def _abandonRun(self) -> None:
        """Stop following a running registration (scene closed, module destroyed); its result is dropped."""
        if self._task is not None:
            self._task.stopPolling()
            self._task = None
            self._run = None
            self.ui.progressBar.visible = False
            setApplyButtonRunning(self.ui.applyButton, False)
