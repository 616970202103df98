"""Names of organ labels: TotalSegmentator's ``total`` task numbering (v2, 117 classes).

TotalSegmentator (Wasserthal et al., Radiology: AI 2023) is the usual source of multi-organ label maps; its
label numbers are fixed per task. A plain label map carries no names, so :func:`label_name` names label ``N`` as
TotalSegmentator's class ``N`` only when asked to, and callers say that the name comes from that numbering.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional


def _total_v2() -> Dict[int, str]:
    names = ["spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
             "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
             "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea",
             "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left",
             "kidney_cyst_right", "sacrum", "vertebrae_S1"]
    names += [f"vertebrae_L{i}" for i in range(5, 0, -1)] + [f"vertebrae_T{i}" for i in range(12, 0, -1)]
    names += [f"vertebrae_C{i}" for i in range(7, 0, -1)]
    names += ["heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
              "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
              "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left",
              "superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left",
              "iliac_artery_right", "iliac_vena_left", "iliac_vena_right"]
    for bone in ("humerus", "scapula", "clavicula", "femur", "hip"):
        names += [f"{bone}_left", f"{bone}_right"]
    names += ["spinal_cord"]
    for muscle in ("gluteus_maximus", "gluteus_medius", "gluteus_minimus", "autochthon", "iliopsoas"):
        names += [f"{muscle}_left", f"{muscle}_right"]
    names += ["brain", "skull"] + [f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13)]
    names += ["sternum", "costal_cartilages"]
    return {i + 1: n for i, n in enumerate(names)}


#: TotalSegmentator v2 ``total`` task: label number -> class name.
TOTALSEGMENTATOR_TOTAL: Dict[int, str] = _total_v2()


def label_name(label: int, names: Optional[Dict[int, str]] = None) -> Optional[str]:
    """The name of ``label`` in ``names`` (default: TotalSegmentator's ``total`` numbering), or ``None``."""
    table = TOTALSEGMENTATOR_TOTAL if names is None else names
    return table.get(int(label))


def describe_labels(labels: Iterable[int], names: Optional[Dict[int, str]] = None) -> str:
    """``"1 spleen, 5 liver, 300"``: each label with its name when it has one."""
    parts = []
    for lab in labels:
        name = label_name(lab, names)
        parts.append(f"{int(lab)} {name}" if name else str(int(lab)))
    return ", ".join(parts)
