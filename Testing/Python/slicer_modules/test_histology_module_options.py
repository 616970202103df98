"""HistologyRegistration: the parameter node's model selector becomes the CLI's options (torch unimportable,
Slicer stubbed), and the instance optimisation is never combined with a model."""

from test_runtime_contract import _run_stubbed


def test_model_selector_becomes_cli_options():
    proc = _run_stubbed("""
        import slicer_stubs
        slicer_stubs.install()
        import HistologyRegistration as m
        logic = m.HistologyRegistrationLogic()
        p = slicer_stubs.parameter_defaults(m.HistologyRegistrationParameterNode)
        p.ioSteps = 40
        opts = logic.optionsFromParameterNode(p)
        assert "--model" not in opts and opts[opts.index("--io-steps") + 1] == "40", opts
        p.model, p.networkPasses = " histology_multimag ", 1
        opts = logic.optionsFromParameterNode(p)
        assert opts[opts.index("--model") + 1] == "histology_multimag", opts
        assert opts[opts.index("--iterations") + 1] == "1", opts
        assert opts[opts.index("--io-steps") + 1] == "0", opts
        assert sys.modules.get("torch") is None
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
