"""Register the volumes shipped in ``RegistrationSuiteLib/data`` with Slicer's Sample Data module."""

import hashlib
import os
import pathlib


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def registerSampleVolumes(category, samples, iconsPath):
    """Add local sample volumes to the Sample Data module (call on ``startupCompleted``).

    Args:
        category: Sample Data category (section title).
        samples: iterable of ``(sampleName, sampleKey, thumbnailFileName)``; ``sampleKey`` is a key of
            ``RegistrationSuiteLib.sample_data.SAMPLES`` ("T1", "T2").
        iconsPath: folder holding the thumbnails.

    The files are installed with the extension, so the "download" is a local copy into Slicer's cache
    (``file://`` URI), verified by checksum; nothing is fetched from the network.
    """
    import SampleData

    from RegistrationSuiteLib.sample_data import sample_path

    # Newer than the oldest supported Slicer (see RegistrationSuiteLib.mrml.slicer_versions.NEWER_APIS): before
    # 5.12 the category is created by registerCustomSampleDataSource itself.
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(category, title=category)
    for sampleName, sampleKey, thumbnail in samples:
        path = sample_path(sampleKey)
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=category,
            sampleName=sampleName,
            thumbnailFileName=os.path.join(iconsPath, thumbnail),
            uris=pathlib.Path(path).as_uri(),
            fileNames=path.name,
            checksums=f"SHA256:{_sha256(path)}",
            nodeNames=sampleName,
        )
