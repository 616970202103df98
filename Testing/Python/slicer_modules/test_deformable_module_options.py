"""DeformableRegistration: the network options (``--network-passes``, ``--network-skip-levels``) go from the
parameter node to the CLI with DeformableConfig's defaults (torch unimportable, Slicer stubbed), and the .ui's
spin boxes offer the logic's ranges and defaults."""

from slicer_module_contract import MODULES_DIR, parse_ui
from test_runtime_contract import _run_stubbed

from RegistrationSuiteLib.methods.deformable.config import DeformableConfig
from RegistrationSuiteLib.mrml import deformable_logic


def test_network_options_reach_the_cli():
    proc = _run_stubbed("""
        import slicer_stubs
        slicer_stubs.install()
        import DeformableRegistration as m
        from RegistrationSuiteLib.cli.main import build_parser
        from RegistrationSuiteLib.methods.deformable.config import DeformableConfig
        from RegistrationSuiteLib.mrml.deformable_logic import cli_options

        def cli(p):  # the options the child gets, parsed as the child parses them
            options = cli_options(logic.configFromParameterNode(p))
            return build_parser().parse_args(["deformable", "--fixed", "f", "--moving", "m", "--output", "t.h5"]
                                             + options)

        logic = m.DeformableRegistrationLogic()
        p = slicer_stubs.parameter_defaults(m.DeformableRegistrationParameterNode)
        defaults = DeformableConfig()
        assert (p.networkPasses, p.networkSkipLevels) == (defaults.network_passes, defaults.network_skip_levels)
        args = cli(p)
        assert (args.network_passes, args.network_skip_levels) == (defaults.network_passes,
                                                                 defaults.network_skip_levels), args
        p.model, p.networkPasses, p.networkSkipLevels = "deformable_mr_synthetic", 3, 0
        args = cli(p)
        assert (args.model, args.network_passes, args.network_skip_levels) == ("deformable_mr_synthetic", 3, 0)
        p.networkPasses = 0  # the configuration refuses it: Apply stays disabled with the reason
        try:
            logic.configFromParameterNode(p)
        except ValueError as error:
            assert "network_passes" in str(error), error
        else:
            raise AssertionError("networkPasses = 0 was accepted")
        assert sys.modules.get("torch") is None
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def test_ui_spin_boxes_offer_the_logic_ranges_and_defaults():
    ui = parse_ui(MODULES_DIR / "DeformableRegistration" / "Resources" / "UI" / "DeformableRegistration.ui")
    for widget, (low, high), default in (
            ("networkPassesSpinBox", deformable_logic.NETWORK_PASSES_RANGE, DeformableConfig().network_passes),
            ("networkSkipLevelsSpinBox", deformable_logic.NETWORK_SKIP_LEVELS_RANGE,
             DeformableConfig().network_skip_levels)):
        cls, props = ui["widgets"][widget]
        assert cls == "QSpinBox"
        assert (int(props["minimum"]), int(props["maximum"]), int(props["value"])) == (low, high, default), widget
        assert low <= default <= high
