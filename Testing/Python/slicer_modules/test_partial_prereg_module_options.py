"""PartialVolumePreregistration offers the CLI's local-search switch and refinement metrics (issue 13, section 4):
the panel binds both, the parameter node's choices are the CLI's, and they reach the config the run uses
(torch unimportable, Slicer stubbed)."""

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

from test_runtime_contract import _run_stubbed

MODULE = Path(__file__).resolve().parents[3] / "RegistrationSuite" / "PartialVolumePreregistration"
UI = MODULE / "Resources" / "UI" / "PartialVolumePreregistration.ui"


def _metric_choices():
    """The ``Choice([...])`` list of the parameter node's ``refineMetric`` (read from the source: the Slicer
    stubs do not keep annotations' metadata)."""
    for node in ast.walk(ast.parse((MODULE / "PartialVolumePreregistration.py").read_text())):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "refineMetric":
            call = node.annotation.slice.elts[1]
            return ast.literal_eval(call.args[0])
    raise AssertionError("no refineMetric field")


def _bindings():
    out = {}
    for widget in ET.parse(UI).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[prop.find("string").text] = (widget.get("class"), widget.get("name"))
    return out


def test_panel_binds_the_local_search_checkbox_and_the_metric_choice():
    bindings = _bindings()
    assert bindings["localSearch"] == ("QCheckBox", "localSearchCheckBox")
    assert bindings["refineMetric"] == ("QComboBox", "refineMetricComboBox")


def test_parameter_node_choices_are_the_clis_and_reach_the_config():
    proc = _run_stubbed(f"""
        import argparse
        import slicer_stubs
        slicer_stubs.install()
        import PartialVolumePreregistration as m
        from RegistrationSuiteLib.cli import partial_prereg as cli
        parser = argparse.ArgumentParser()
        cli.add_parser(parser.add_subparsers())
        sub = parser._subparsers._group_actions[0].choices["partial-prereg"]
        choices = {{a.dest: a.choices for a in sub._actions}}
        assert sorted({_metric_choices()!r}) == sorted(choices["refine"]), choices["refine"]
        assert "no_local_search" in choices
        logic = m.PartialVolumePreregistrationLogic()
        p = slicer_stubs.parameter_defaults(m.PartialVolumePreregistrationParameterNode)
        config = logic.configFromParameterNode(p)
        assert config.local_search is True and config.refine == "mi", config
        p.localSearch, p.refineMetric = False, "nmi"
        config = logic.configFromParameterNode(p)
        assert config.local_search is False and config.refine == "nmi", config
        assert sys.modules.get("torch") is None
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
