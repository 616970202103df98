"""OrganPointCloudRegistration: the parameter node's point sampling and common field of view (defaults from
OrganPointCloudConfig) become the config's ``spread_sampling`` and ``common_fov`` (torch unimportable, Slicer
stubbed)."""

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


def test_common_field_of_view_parameter_becomes_the_config_value():
    proc = _run_stubbed("""
        import slicer_stubs
        slicer_stubs.install()
        import OrganPointCloudRegistration as m
        from RegistrationSuiteLib.methods.organ_point_cloud.config import OrganPointCloudConfig

        logic = m.OrganPointCloudRegistrationLogic()
        p = slicer_stubs.parameter_defaults(m.OrganPointCloudRegistrationParameterNode)
        p.organTable = ""
        assert p.commonFieldOfView is OrganPointCloudConfig().common_fov is True
        assert logic.configFromParameterNode(p).common_fov is True
        p.commonFieldOfView = False
        assert logic.configFromParameterNode(p).common_fov is False
        p.commonFieldOfView = True
        assert logic.configFromParameterNode(p).common_fov is True
        assert sys.modules.get("torch") is None
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
