"""The widgets' Apply (``ChildRunMixin``) gives every child run ``--threads`` from the user setting, default every
core (torch unimportable, Slicer stubbed; the run itself is recorded, not started)."""

from test_runtime_contract import _run_stubbed


def test_apply_passes_the_thread_setting_to_the_child_run():
    proc = _run_stubbed("""
        import slicer_stubs
        slicer_stubs.install()
        from unittest import mock
        import slicer
        from RegistrationSuiteLib.device import default_thread_count
        from RegistrationSuiteLib.mrml.runner import RunSpec
        from RegistrationSuiteWidgets import THREADS_SETTING, childrun

        made, RealChildRun = [], childrun.ChildRun

        class RecordedRun:
            def __init__(self, spec, **kwargs):
                self.real = RealChildRun(spec, python="python", **kwargs)  # the real constructor's checks
                made.append(self.real)

            def start(self):
                return self

        childrun.ChildRun, childrun.torchReadyForRun = RecordedRun, lambda: True

        class Widget(childrun.ChildRunMixin):
            def __init__(self):
                self.ui, self._parameterNode = mock.MagicMock(), object()
                self.logic = mock.MagicMock()
                self.logic.runSpecFromParameterNode.return_value = RunSpec(
                    command="partial-prereg", options=["--fixed", "f", "--moving", "m", "--output", "t.h5"])

        settings = {}
        slicer.app.userSettings.return_value.value.side_effect = lambda key, default="": settings.get(key, default)
        for stored, expected in ((None, default_thread_count()), ("3", 3), ("0", default_thread_count())):
            settings.pop(THREADS_SETTING, None)
            if stored is not None:
                settings[THREADS_SETTING] = stored
            Widget()._startRun()
            args = made[-1].command_line()
            assert made[-1].threads == expected, (stored, made[-1].threads)
            assert args[args.index("--threads") + 1] == str(expected), args
        assert sys.modules.get("torch") is None
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
