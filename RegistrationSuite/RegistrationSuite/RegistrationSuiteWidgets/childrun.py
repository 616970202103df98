"""Apply ↔ Cancel for a registration run in a child process, polled from a ``qt.QTimer`` (no threads).

The logic declares the run (``runSpecFromParameterNode(parameterNode)`` returns a
``RegistrationSuiteLib.mrml.runner.RunSpec``); :class:`ChildRunMixin` starts it as a
``RegistrationSuiteLib.mrml.runner.ChildRun`` (``PythonSlicer -m RegistrationSuiteLib <command> ...``), polls it
every 100 ms (progress bar and status line), turns Apply into Cancel while it runs, and shows the outcome once:
the result summary, "Cancelled" (the scene is unchanged), or one error line with the child's last stderr lines
under "Details". Nothing raised in the timer slot escapes it (an exception in a Qt slot is only printed, and a
``SystemExit`` there would end Slicer).
"""

import logging
import traceback
from contextlib import contextmanager

import qt
import slicer
from slicer.i18n import tr as _

from RegistrationSuiteLib.device import thread_count_from_setting
from RegistrationSuiteLib.mrml.runner import CANCELLED, FAILED, RUNNING, SUCCEEDED, ChildRun

from .torchsupport import torchReadyForRun

#: Poll period of the child process (ms).
POLL_INTERVAL_MS = 100
#: User setting with torch's CPU threads for the child process (``--threads``); unset: every core. Set it from
#: Slicer's Python console, e.g. ``slicer.app.userSettings().setValue("RegistrationSuite/Threads", 4)``.
THREADS_SETTING = "RegistrationSuite/Threads"


def childProcessThreads():
    """``--threads`` for a child run: the user setting :data:`THREADS_SETTING` when it holds a whole number
    >= 1, else every CPU core Slicer may use (``RegistrationSuiteLib.device.default_thread_count``)."""
    return thread_count_from_setting(slicer.app.userSettings().value(THREADS_SETTING, ""))


def showError(message, details=""):
    """One error line in a message box with ``details`` under "Details" (only logged when testing)."""
    logging.error("%s\n%s", message, details)
    if details:
        slicer.util.errorDisplay(message, detailedText=details)
    else:
        slicer.util.errorDisplay(message)


@contextmanager
def reportErrors(message, waitCursor=False):
    """Like ``slicer.util.tryWithErrorDisplay`` but the exception does not propagate: for Qt slots, where a
    re-raised exception is only printed (and a ``SystemExit`` would end Slicer). Shows ``message`` and the
    error in one line, the traceback under "Details"."""
    if waitCursor:
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    except Exception as error:  # noqa: BLE001 - reported to the user, never re-raised in a slot
        if waitCursor:
            slicer.app.restoreOverrideCursor()
            waitCursor = False
        showError(f"{message} {error}", traceback.format_exc())
    finally:
        if waitCursor:
            slicer.app.restoreOverrideCursor()


def setApplyButtonRunning(button, running, applyText=None, cancelText=None):
    """Turn an Apply button into a Cancel button while a run goes on, and back.

    The button stays enabled while running (so the user can cancel); its enabled state when idle is decided
    by the module's ``_checkCanApply``.
    """
    button.text = (cancelText or _("Cancel")) if running else (applyText or _("Apply"))
    if running:
        button.enabled = True
        button.toolTip = _("Stop the running registration (nothing is written to the scene).")


class ChildRunMixin:
    """Apply ↔ Cancel, progress and outcome of a child-process run, shared by the modules' widgets.

    The widget provides ``self.logic.runSpecFromParameterNode(parameterNode)``, ``self.ui.applyButton`` /
    ``progressBar`` / ``resultsLabel``, ``self._parameterNode``, ``_checkCanApply()`` and
    ``_showResult(outcome) -> str`` (main thread, after the outputs are in the scene; returns the results
    label's text).
    """

    runName = "RegistrationSuite"
    _childRun = None  # ChildRun while a registration runs
    _pollTimer = None

    def isRunning(self):
        return self._childRun is not None

    def onApplyButton(self) -> None:
        """Start a registration from the parameter node, or cancel the running one."""
        if self._childRun is not None:
            self._childRun.cancel()
            self.ui.resultsLabel.text = _("Cancelling...")
            return
        try:
            self._startRun()
        except Exception as error:  # noqa: BLE001 - a Qt slot: show the error, never raise
            self._endRunUi()
            showError(_("Failed to start the registration: {error}").format(error=error), traceback.format_exc())

    def _startRun(self) -> None:
        if not torchReadyForRun():
            return
        spec = self.logic.runSpecFromParameterNode(self._parameterNode)  # reads the parameter node
        run = ChildRun(spec, base_environment=slicer.util.startupEnvironment(), threads=childProcessThreads())
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            run.start()  # exports the inputs, starts the child and returns at once
        finally:
            slicer.app.restoreOverrideCursor()
        self._childRun = run
        if self._pollTimer is None:
            self._pollTimer = qt.QTimer()
            self._pollTimer.setInterval(POLL_INTERVAL_MS)
            self._pollTimer.connect("timeout()", self._onPoll)
        self.ui.resultsLabel.text = _("Starting...")
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        setApplyButtonRunning(self.ui.applyButton, True)
        self._pollTimer.start()

    def _onPoll(self) -> None:
        run = self._childRun
        if run is None:
            self._pollTimer.stop()
            return
        state = run.poll()  # never raises
        self.ui.progressBar.value = int(round(100 * run.fraction))
        self.ui.progressBar.format = "%p%"
        if state == RUNNING:
            if run.message and not run.cancel_requested:
                self.ui.resultsLabel.text = run.message
            return
        self._childRun = None
        self._pollTimer.stop()
        self._endRunUi()
        if state == SUCCEEDED:
            try:
                self.ui.resultsLabel.text = self._showResult(run.outcome)
            except Exception as error:  # noqa: BLE001 - a Qt slot
                showError(_("The registration finished but its result could not be shown: {error}").format(
                    error=error), traceback.format_exc())
        elif state == CANCELLED:
            self.ui.resultsLabel.text = _("Cancelled: nothing was written to the scene.")
        elif state == FAILED:
            self.ui.resultsLabel.text = _("Failed: {error}").format(error=run.error.message)
            showError(run.error.message, run.error.details)

    def _endRunUi(self) -> None:
        self.ui.progressBar.visible = False
        setApplyButtonRunning(self.ui.applyButton, False)
        self._checkCanApply()

    def _abandonRun(self) -> None:
        """Stop a running registration at once (scene closed, module destroyed); nothing is written."""
        if self._pollTimer is not None:
            self._pollTimer.stop()
        if self._childRun is not None:
            self._childRun.abandon()
            self._childRun = None
            self._endRunUi()
