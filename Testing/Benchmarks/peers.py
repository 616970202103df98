"""External rigid peers shared by the benchmark scripts: SimpleITK Mattes MI and elastix (itk-elastix).

Both return a homogeneous ``(4, 4)`` fixed → moving matrix (LPS mm), like the project's methods.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def sitk_mattes_rigid(fixed: sitk.Image, moving: sitk.Image, *, sampling: float) -> np.ndarray:
    """SimpleITK Mattes-MI rigid registration from the geometric centres (3 levels, regular-step gradient
    descent, ``sampling`` = fraction of the fixed voxels sampled at random, seed 0 — passed through
    ``itk_seed`` because SimpleITK reads a literal 0 as "seed from the wall clock")."""
    from RegistrationSuiteLib.geometry import affine_matrix_from_sitk
    from RegistrationSuiteLib.seeding import itk_seed

    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed=itk_seed(0))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=300,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(init, inPlace=False)
    return affine_matrix_from_sitk(reg.Execute(fixed, moving))


def elastix_rigid(fixed: sitk.Image, moving: sitk.Image, *, centre_init: bool = False) -> np.ndarray:
    """elastix's default rigid parameter map; ``centre_init`` adds its geometric-centre initialisation
    (otherwise the images are used as they are)."""
    import itk

    from RegistrationSuiteLib.geometry import affine_matrix_from_sitk

    params = itk.ParameterObject.New()
    pm = params.GetDefaultParameterMap("rigid")
    if centre_init:
        pm["AutomaticTransformInitialization"] = ["true"]
        pm["AutomaticTransformInitializationMethod"] = ["GeometricalCenter"]
    params.AddParameterMap(pm)
    _, result = itk.elastix_registration_method(to_itk(fixed), to_itk(moving), parameter_object=params,
                                                log_to_console=False)
    out = result.GetParameterMap(0)
    p = [float(v) for v in out["TransformParameters"]]
    c = [float(v) for v in out["CenterOfRotationPoint"]]
    tx = sitk.Euler3DTransform(c, p[0], p[1], p[2], p[3:6])
    if out.get("ComputeZYX", ("false",))[0] == "true":
        tx.SetComputeZYX(True)
    return affine_matrix_from_sitk(tx)


def to_itk(image: sitk.Image):
    """A 3D SimpleITK image as a float32 ITK image with the same geometry."""
    import itk

    out = itk.GetImageFromArray(sitk.GetArrayFromImage(image).astype(np.float32))
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(3, 3)))
    return out
