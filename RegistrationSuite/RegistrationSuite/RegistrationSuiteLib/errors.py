"""Exceptions shared by every layer of RegistrationSuite.

The CLI turns :class:`InputError` and :class:`RegistrationCancelled` into one-line messages and a non-zero
exit; the Slicer modules show them with ``slicer.util.tryWithErrorDisplay``.
"""


class InputError(ValueError):
    """An input (file, image, mask, point set, parameter) is not what the method needs.

    The message names the argument, what was expected and what arrived.
    """


class RegistrationCancelled(Exception):
    """Raised when the caller's ``cancel`` callback asked to stop; nothing has been written."""


class RegistrationFailed(RuntimeError):
    """The method ran but could not produce a transform (e.g. no overlap at the requested minimum)."""
