"""Progress reporting and cooperative cancellation.

Every long-running entry point takes two optional callables:

- ``progress(fraction, message)`` with ``fraction`` in [0, 1];
- ``cancel()`` returning ``True`` when the caller wants to stop.

:class:`Progress` wraps both so algorithms call ``report`` and ``check_cancel`` without ``None`` checks, and
can hand a sub-range of [0, 1] to a nested step with :meth:`Progress.sub`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from .errors import RegistrationCancelled

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]


@dataclass
class Progress:
    """Maps a step's local progress in [0, 1] onto ``[start, stop]`` of the caller's bar."""

    callback: Optional[ProgressCallback] = None
    cancel: Optional[CancelCallback] = None
    start: float = 0.0
    stop: float = 1.0

    def report(self, fraction: float, message: str = "") -> None:
        """Report local progress ``fraction`` (clipped to [0, 1]) and check for cancellation."""
        self.check_cancel()
        if self.callback is not None:
            f = min(max(float(fraction), 0.0), 1.0)
            self.callback(self.start + f * (self.stop - self.start), message)

    def check_cancel(self) -> None:
        """Raise :class:`RegistrationCancelled` if the caller asked to stop."""
        if self.cancel is not None and self.cancel():
            raise RegistrationCancelled("registration cancelled by the user")

    def sub(self, start: float, stop: float) -> "Progress":
        """A child reporter covering local ``[start, stop]`` of this one."""
        span = self.stop - self.start
        return Progress(self.callback, self.cancel, self.start + start * span, self.start + stop * span)


def as_progress(progress=None, cancel=None) -> Progress:
    """Accept a :class:`Progress`, a bare callback or ``None``."""
    if isinstance(progress, Progress):
        if cancel is not None and progress.cancel is None:
            return Progress(progress.callback, cancel, progress.start, progress.stop)
        return progress
    return Progress(progress, cancel)
