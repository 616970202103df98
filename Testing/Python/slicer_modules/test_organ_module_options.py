"""OrganPointCloudRegistration: the parameter node's point sampling (default from OrganPointCloudConfig) becomes
the config's ``spread_sampling`` (torch unimportable, Slicer stubbed)."""

from test_runtime_contract import _run_stubbed


def test_sampling_parameter_becomes_the_config_value():
    proc = _run_stubbed("""
        import slicer_stubs
        slicer_stubs.install()
        import OrganPointCloudRegistration as m
        from RegistrationSuiteLib.methods.organ_point_cloud.config import OrganPointCloudConfig

        logic = m.OrganPointCloudRegistrationLogic()
        p = slicer_stubs.parameter_defaults(m.OrganPointCloudRegistrationParameterNode)
        p.organTable = ""  # no inputs selected yet: the configuration alone
        assert p.sampling == ("spread" if OrganPointCloudConfig().spread_sampling else "random"), p.sampling
        assert logic.configFromParameterNode(p).spread_sampling is OrganPointCloudConfig().spread_sampling
        p.sampling = "random"
        assert logic.configFromParameterNode(p).spread_sampling is False
        p.sampling = "spread"
        assert logic.configFromParameterNode(p).spread_sampling is True
        assert sys.modules.get("torch") is None
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
