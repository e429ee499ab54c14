"""Synthetic KiTS-like abdominal CT phantoms: pure, and conditioned on real KiTS19 labels.

The paper trains on the 210 KiTS19 CT scans (MSAN paper, §2.1): 27 GB of imaging and a GPU. So that
the whole pipeline and the book run on a laptop, this module draws stand-in cases that look like
late-arterial abdominal CT and are written in exactly the KiTS19 layout:

* air outside an elliptical body; subcutaneous fat; an abdominal muscle wall; visceral fat;
  back muscles, quadratus lumborum and psoas; a lumbar spine (vertebral bodies with cortex and
  cancellous bone, discs, spinal canal, posterior arch, spinous and transverse processes); ribs in the
  upper slices; aorta and inferior vena cava with renal vessels; liver (patient's right), spleen
  (left); bowel loops filled with gas, fluid, both (air-fluid level) or faeces;
* two kidneys (in some cases one) placed paravertebrally, bean-shaped with a medial hilum, tilted
  like real kidneys, ~10-13 cm long, with an enhancing cortex, darker medullary pyramids and a renal
  sinus of fat and urine, wrapped in perirenal fat;
* 1-3 tumours per case, 5-60 mm in diameter, some exophytic (bulging out of the kidney contour),
  some with a necrotic core, with HU that overlap the kidney's so tumour is the harder class;
* partial-volume blur and Gaussian noise; slice thickness drawn from the KiTS19 distribution and a
  slice count that covers the kidneys plus 20-80 mm margins.

Geometry is in millimetres, so one seed gives the same anatomy at every in-plane size: ``size``
only chooses the sampling of a field of view drawn for the case (pixel spacing ~0.78 mm at 512).
Array axes follow KiTS19 (orientation IPL): axis 0 runs inferiorly, axis 1 (rows) posteriorly,
axis 2 (columns) towards the patient's left. Coordinates inside this module are ``(z, y, x)`` mm with
z from the top slice and y, x from the centre of the field of view.

Two layers:

* :func:`phantom_spec` draws the case (a :class:`PhantomSpec`: spacing, shape, anatomy, kidneys,
  tumours, tissue HU) without any voxels; :func:`make_phantom` renders it. ``phantom_spec(seed,
  **same_kwargs).spacing`` is therefore the spacing of ``make_phantom(seed, **same_kwargs)``.
* :func:`phantom_from_label` keeps a real segmentation and synthesises everything else around it:
  body, spine and organs are placed from the kidneys' positions, and the kidney and
  tumour textures are painted exactly as in the pure phantoms (the painting step only sees a label).

Everything is deterministic for a seed (NumPy ``SeedSequence`` streams), vectorised, and processed in
slabs of slices so a 512 x 512 x 300 case needs ~1 GB of memory.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from kitsmsan.data.kits19 import (
    BACKGROUND,
    KIDNEY,
    TUMOR,
    case_id as _case_id,
    check_label_values,
    list_cases,
    load_case,
    save_case,
)
from kitsmsan.errors import ConfigError, DataError
from kitsmsan.utils.io import atomic_write_json

__all__ = [
    "GENERATOR_VERSION",
    "SLICE_THICKNESS_CHOICES",
    "SLICE_THICKNESS_WEIGHTS",
    "TISSUES",
    "KidneySpec",
    "TumorSpec",
    "PhantomSpec",
    "phantom_spec",
    "phantom_spacing",
    "make_phantom",
    "render_phantom",
    "write_phantom_dataset",
    "resample_label_z",
    "crop_label_z",
    "phantom_from_label",
    "write_label_conditioned_dataset",
    "resample_label_inplane",
]

#: bump when the same seed would give a different phantom
GENERATOR_VERSION = "1.0"

#: slice thicknesses (mm) drawn for pure phantoms, and their probabilities: the 190 public KiTS19
#: label headers (cases 0-189) rounded to the nearest choice: 0.5 mm 31, 1 mm 21, 2.5 mm 24,
#: 3 mm 35, 5 mm 79 cases (median 3 mm, mode 5 mm).
SLICE_THICKNESS_CHOICES = (0.5, 1.0, 2.5, 3.0, 5.0)
SLICE_THICKNESS_WEIGHTS = (31 / 190, 21 / 190, 24 / 190, 35 / 190, 79 / 190)

#: tissue classes of the map returned with ``return_tissues=True`` (uint8 codes)
TISSUES = {
    "air": 0, "fat": 1, "muscle": 2, "bone": 3, "cancellous_bone": 4, "disc": 5, "csf": 6,
    "liver": 7, "spleen": 8, "bowel_wall": 9, "bowel_fluid": 10, "bowel_gas": 11,
    "bowel_content": 12, "artery": 13, "vein": 14, "renal_cortex": 15, "renal_medulla": 16,
    "renal_sinus": 17, "urine": 18, "tumor": 19, "necrosis": 20,
}
_T = TISSUES
_TUMOR_BASE = 32          # internal codes 32..231: tumour component i (own mean HU); 19 in the output
_TUMOR_SLOTS = 200
_CAVITY = (_T["fat"], _T["liver"], _T["spleen"], _T["bowel_wall"], _T["bowel_fluid"],
           _T["bowel_gas"], _T["bowel_content"])

# (low, high) of each tissue's case mean HU, then fine and slow texture amplitudes (HU, 1 sigma)
_HU_RANGES = {
    "air": ((-1000, -1000), 0, 0), "fat": ((-115, -85), 8, 8), "muscle": ((40, 60), 6, 4),
    "bone": ((700, 1000), 60, 40), "cancellous_bone": ((180, 280), 30, 20),
    "disc": ((70, 100), 8, 5), "csf": ((5, 15), 4, 2), "liver": ((55, 75), 6, 6),
    "spleen": ((90, 130), 8, 8), "bowel_wall": ((40, 70), 6, 4), "bowel_fluid": ((10, 30), 5, 3),
    "bowel_gas": ((-1000, -960), 10, 0), "bowel_content": ((-20, 40), 40, 10),
    "artery": ((200, 330), 8, 5), "vein": ((90, 150), 8, 5), "renal_cortex": ((150, 250), 10, 10),
    "renal_medulla": ((30, 80), 8, 8), "renal_sinus": ((-80, -30), 15, 10),
    "urine": ((0, 20), 5, 3), "necrosis": ((10, 30), 6, 5),
}
_TUMOR_HU_RANGE = (50.0, 170.0)   # mean HU of a tumour component (kidney: medulla 30-80, cortex 150-250)
_PSF_MM = 0.5                     # in-plane point-spread (sigma, mm) of the partial-volume blur
_CT_RANGE = (-1024.0, 3071.0)     # 12-bit CT range; the image is clipped to it
_SLAB_VOXELS = 2_000_000          # voxels per slab of slices in the slab-wise passes
_SALT = 0x4B695453                # "KiTS": keeps these streams apart from other seeded code


# ------------------------------------------------------------------------------------------------
# the case description (no voxels)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KidneySpec:
    """One kidney of a pure phantom.

    Attributes:
        side: ``"right"`` or ``"left"`` (the patient's side; right is at small column index).
        center_mm: ``(z, y, x)`` of the centre, mm (z from the top slice, y/x from the FOV centre).
        semi_axes_mm: ``(long, width, depth)`` half-lengths, mm (length = 2 x long, 104-128 mm).
        axes: 3 x 3 rows = the unit vectors (in ``(z, y, x)``) of the long axis (towards the upper
            pole), the width axis (towards the hilum, medially) and the depth axis.
    """

    side: str
    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class TumorSpec:
    """One tumour of a pure phantom (its appearance is drawn when painting; see module doc).

    Attributes:
        kidney: side of the kidney it grows from.
        center_mm: ``(z, y, x)`` mm.
        diameter_mm: nominal diameter (5-60 mm); the surface is lumpy by about +-10 %.
        exophytic: True if the centre lies outside the kidney contour (the tumour bulges out).
        lumps: ``(direction (3,), frequency, phase, amplitude)`` surface perturbations.
        stretch: per-axis elongation factors ``(z, y, x)``.
    """

    kidney: str
    center_mm: tuple[float, float, float]
    diameter_mm: float
    exophytic: bool
    lumps: tuple[tuple[tuple[float, float, float], float, float, float], ...]
    stretch: tuple[float, float, float]


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoidal organ or bowel loop; ``content`` for bowel: gas/fluid/mixed/feces."""

    tissue: str
    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    content: str = ""


@dataclass(frozen=True)
class Anatomy:
    """Everything around the kidneys (all mm; y/x relative to the FOV centre, y posterior)."""

    midline_x: float
    body_y: float
    body_semi_x: float
    body_semi_y: float
    body_wobble: tuple[float, float, float]       # relative amplitude, period (mm), phase
    fat_mm: float
    muscle_mm: float
    spine_y: float
    vertebra_semi: tuple[float, float]            # (x, y) half-axes of the vertebral body
    vertebra_period_mm: float
    vertebra_phase_mm: float
    disc_mm: float
    psoas_radius_mm: tuple[float, float]          # top, bottom of the volume
    rib_pitch_mm: float
    rib_drop_mm: float
    rib_end_z: float
    rib_phase_mm: float
    aorta: tuple[float, float, float]             # y, x, radius
    ivc: tuple[float, float, float, float]        # y, x, semi-y, semi-x
    organs: tuple[Ellipsoid, ...]                 # liver, spleen, bowel loops (painted in order)
    perirenal_fat_mm: float
    cortex_mm: float
    pyramids: tuple[int, float, float, float]     # count, period along z (mm), phases


@dataclass(frozen=True)
class PhantomSpec:
    """A drawn phantom case: everything :func:`render_phantom` needs, and the metadata to record.

    Attributes:
        seed: the seed it was drawn from.
        shape: ``(Z, Y, X)`` voxels.
        spacing: ``(z, y, x)`` mm.
        anatomy: body, spine, vessels and organs.
        kidneys: 1 or 2 :class:`KidneySpec` (empty for a label-conditioned phantom).
        tumors: 1-3 :class:`TumorSpec` (empty for a label-conditioned phantom).
        hu: mean HU of each tissue for this case.
        noise_sigma: standard deviation of the Gaussian noise, HU (10-20).
        version: :data:`GENERATOR_VERSION`.
    """

    seed: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    anatomy: Anatomy
    kidneys: tuple[KidneySpec, ...]
    tumors: tuple[TumorSpec, ...]
    hu: dict = field(default_factory=dict)
    noise_sigma: float = 15.0
    version: str = GENERATOR_VERSION

    def to_dict(self, *, full: bool = False) -> dict:
        """JSON-ready summary (``full=True`` adds the anatomy and organ list)."""
        out = {
            "seed": self.seed, "version": self.version, "shape": list(self.shape),
            "spacing": [round(float(s), 6) for s in self.spacing],
            "noise_sigma": round(self.noise_sigma, 3),
            "kidneys": [_rounded(dataclasses.asdict(k)) for k in self.kidneys],
            "tumors": [_rounded({k: v for k, v in dataclasses.asdict(t).items()
                                 if k not in ("lumps", "stretch")}) for t in self.tumors],
        }
        if full:
            out["anatomy"] = _rounded(dataclasses.asdict(self.anatomy))
            out["hu"] = _rounded(self.hu)
        return out


def _rounded(obj):
    if isinstance(obj, float):
        return round(obj, 3)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_SALT, int(seed), stream]))


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r}: expected a non-negative integer")
    return int(seed)


def _check_positive(value, name: str, *, integer: bool = False, minimum: float = 0.0):
    if value is None:
        return None
    bad = isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
    if bad or not math.isfinite(float(value)) or value <= minimum or (integer and int(value) != value):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name}={value!r}: expected {kind} > {minimum:g}")
    return int(value) if integer else float(value)


def _kidney_axes(side: str, tilt_coronal: float, tilt_sagittal: float, hilum_turn: float):
    """Unit (long, width, depth) axes of a kidney in (z, y, x): upper pole medial and posterior."""
    medial = 1.0 if side == "right" else -1.0  # right kidney: the midline is towards +x
    a, b, g = (math.radians(v) for v in (tilt_coronal, tilt_sagittal, hilum_turn))
    long_ax = np.array([-math.cos(a) * math.cos(b), math.sin(b), medial * math.sin(a)])
    long_ax /= np.linalg.norm(long_ax)
    width = np.array([0.0, -math.sin(g), medial * math.cos(g)])  # medial, turned anteriorly
    width -= width.dot(long_ax) * long_ax
    width /= np.linalg.norm(width)
    depth = np.cross(long_ax, width)
    return tuple(tuple(float(v) for v in ax) for ax in (long_ax, width, depth))


def _half_extent(axes, semi) -> np.ndarray:
    """Half extent along (z, y, x) of an ellipsoid with the given axes rows and semi-axes."""
    m = np.asarray(axes) * np.asarray(semi)[:, None]
    return np.sqrt((m ** 2).sum(axis=0))


def _draw_hu(rng: np.random.Generator) -> dict:
    return {name: float(rng.uniform(*rng_range)) for name, (rng_range, _, _) in _HU_RANGES.items()}


def _draw_anatomy(rng, *, midline_x, body_y, body_semi_x, body_semi_y, fat_mm, muscle_mm, spine_y,
                  vertebra_rx, z_extent, right_kidney_z, left_kidney_z) -> Anatomy:
    """Organs, spine details and vessels around a given body and spine (shared by both kinds)."""
    inner_x = body_semi_x - fat_mm - muscle_mm
    inner_y = body_semi_y - 0.8 * fat_mm - muscle_mm
    wobble = (float(rng.uniform(0.0, 0.05)), float(rng.uniform(150, 400)),
              float(rng.uniform(0, 2 * math.pi)))
    organs = []
    # liver: patient's right, anterior-lateral, its tip near the right kidney's middle
    liver_sz = float(rng.uniform(70, 100))
    liver_tip = right_kidney_z + float(rng.uniform(-25, 10))
    organs.append(Ellipsoid("liver", (liver_tip - liver_sz, body_y - float(rng.uniform(0, 0.2)) * body_semi_y,
                                      midline_x - float(rng.uniform(0.35, 0.5)) * inner_x),
                            (liver_sz, float(rng.uniform(0.55, 0.75)) * inner_y,
                             float(rng.uniform(0.4, 0.55)) * inner_x)))
    if rng.random() < 0.9:  # spleen: left, posterior-lateral, above the left kidney
        organs.append(Ellipsoid("spleen", (left_kidney_z - float(rng.uniform(20, 50)),
                                           body_y + 0.25 * body_semi_y, midline_x + 0.6 * inner_x),
                                (float(rng.uniform(45, 55)), float(rng.uniform(35, 45)),
                                 float(rng.uniform(20, 28)))))
    contents = ("gas", "fluid", "mixed", "feces")
    for _ in range(int(rng.integers(12, 30))):
        organs.append(Ellipsoid(
            "bowel",
            (float(rng.uniform(0, z_extent)), body_y + float(rng.uniform(-0.85, 0.3)) * inner_y,
             midline_x + float(rng.uniform(-0.8, 0.8)) * inner_x),
            tuple(float(v) for v in rng.uniform(10, 28, size=3)),
            str(rng.choice(contents, p=(0.25, 0.35, 0.25, 0.15)))))
    return Anatomy(
        midline_x=float(midline_x), body_y=float(body_y), body_semi_x=float(body_semi_x),
        body_semi_y=float(body_semi_y), body_wobble=wobble, fat_mm=float(fat_mm),
        muscle_mm=float(muscle_mm), spine_y=float(spine_y),
        vertebra_semi=(float(vertebra_rx), float(vertebra_rx) * float(rng.uniform(0.7, 0.8))),
        vertebra_period_mm=float(rng.uniform(34, 40)), vertebra_phase_mm=float(rng.uniform(0, 40)),
        disc_mm=float(rng.uniform(6, 10)),
        psoas_radius_mm=(float(rng.uniform(5, 9)), float(rng.uniform(18, 25))),
        rib_pitch_mm=float(rng.uniform(24, 32)), rib_drop_mm=float(rng.uniform(50, 90)),
        rib_end_z=float(min(right_kidney_z, left_kidney_z) - rng.uniform(0, 20)),
        rib_phase_mm=float(rng.uniform(0, 32)),
        aorta=(float(spine_y - rng.uniform(26, 32)), float(midline_x + rng.uniform(12, 20)),
               float(rng.uniform(9, 13))),
        ivc=(float(spine_y - rng.uniform(24, 30)), float(midline_x - rng.uniform(20, 28)),
             float(rng.uniform(7, 10)), float(rng.uniform(11, 15))),
        organs=tuple(organs), perirenal_fat_mm=float(rng.uniform(4, 12)),
        cortex_mm=float(rng.uniform(4, 7)),
        pyramids=(int(rng.integers(5, 8)), float(rng.uniform(18, 28)),
                  float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi))),
    )


def phantom_spec(
    seed: int,
    *,
    size: int = 512,
    num_slices: int | None = None,
    slice_thickness: float | None = None,
    pixel_spacing: float | None = None,
) -> PhantomSpec:
    """Draw a pure phantom case (no voxels): the description :func:`make_phantom` renders.

    All random draws happen before the sampling is chosen, so the anatomy of a seed does not depend
    on ``size`` or ``num_slices`` (only how it is sampled does).

    Args:
        seed: non-negative integer; the same seed and arguments give the same case.
        size: in-plane rows = columns (default 512, like KiTS19; e.g. 128 for CPU work). The field
            of view is drawn per case (~400 mm, pixel spacing ~0.78 mm at 512) and kept, so smaller
            sizes see the same anatomy with larger pixels.
        num_slices: slice count override (default None: the count that covers the kidneys plus
            20-80 mm margins at the drawn thickness). Without ``slice_thickness``, the thickness is
            then set so those slices still cover the same z-extent.
        slice_thickness: mm (default None: drawn from :data:`SLICE_THICKNESS_CHOICES` with the
            KiTS19 frequencies). Given together with ``num_slices``, the volume is centred on the
            kidneys and may cut them.
        pixel_spacing: in-plane mm (default None: field of view / ``size``).

    Returns:
        A :class:`PhantomSpec`.

    Raises:
        ConfigError: naming a bad argument.
    """
    seed = _check_seed(seed)
    size = _check_positive(size, "size", integer=True, minimum=15)
    num_slices = _check_positive(num_slices, "num_slices", integer=True)
    slice_thickness = _check_positive(slice_thickness, "slice_thickness")
    pixel_spacing = _check_positive(pixel_spacing, "pixel_spacing")
    rng = _rng(seed, 0)

    # body and spine (mm; y from the FOV centre, posterior positive)
    midline_x = float(rng.uniform(-10, 10))
    body_y = float(rng.uniform(-20, 10))
    body_semi_x = float(rng.uniform(135, 175))
    fat_mm = float(rng.uniform(8, 40))
    muscle_mm = float(rng.uniform(8, 15))
    body_semi_y = body_semi_x * float(rng.uniform(0.62, 0.8))
    spine_y = body_y + body_semi_y - 0.9 * fat_mm - float(rng.uniform(55, 70))
    vertebra_rx = float(rng.uniform(19, 24))

    # kidneys: 104-128 mm long, centres 55-75 mm from the midline, the right one lower
    solitary = rng.random() < 0.12
    missing = str(rng.choice(("right", "left"))) if solitary else ""
    left_z = 0.0
    right_z = left_z + float(rng.uniform(5, 25))
    kidneys = []
    for side, z in (("right", right_z), ("left", left_z)):
        semi = np.array([rng.uniform(52, 64), rng.uniform(30, 37), rng.uniform(22, 29)])
        offset = float(rng.uniform(55, 75))
        y = spine_y + float(rng.uniform(0, 20))
        axes = _kidney_axes(side, rng.uniform(8, 20), rng.uniform(5, 20), rng.uniform(20, 40))
        if side == missing:
            continue
        if solitary:
            semi = semi * 1.1  # compensatory hypertrophy of a solitary kidney
        x = midline_x + (-offset if side == "right" else offset)
        kidneys.append([side, np.array([z, y, x]), semi, axes])
    # the body must hold the kidneys inside its muscle wall
    reach = max(abs(k[1][2] - midline_x) + _half_extent(k[3], k[2])[2] for k in kidneys)
    body_semi_x = max(body_semi_x, reach + fat_mm + muscle_mm + 10)
    body_semi_y = max(body_semi_y, body_semi_x * 0.6)

    # z layout: kidneys plus margins; sampling
    tops = [k[1][0] - _half_extent(k[3], k[2])[0] for k in kidneys]
    bottoms = [k[1][0] + _half_extent(k[3], k[2])[0] for k in kidneys]
    top = min(tops) - float(rng.uniform(20, 80))
    bottom = max(bottoms) + float(rng.uniform(20, 80))
    drawn_thickness = float(rng.choice(SLICE_THICKNESS_CHOICES, p=SLICE_THICKNESS_WEIGHTS))
    fov = float(np.clip(2 * body_semi_x + rng.uniform(20, 70), 340, 470))
    extent = bottom - top
    if slice_thickness is None:
        slice_thickness = extent / num_slices if num_slices is not None else drawn_thickness
    if num_slices is None:
        num_slices = max(1, int(round(extent / slice_thickness)))
    else:  # centre the requested slab on the kidneys
        top = 0.5 * (min(tops) + max(bottoms)) - 0.5 * num_slices * slice_thickness
    if pixel_spacing is None:
        pixel_spacing = fov / size
    spacing = (float(slice_thickness), float(pixel_spacing), float(pixel_spacing))
    z_extent = num_slices * slice_thickness
    for k in kidneys:
        k[1][0] -= top
    right_z -= top
    left_z -= top

    kidney_specs = tuple(KidneySpec(side, tuple(float(v) for v in c), tuple(float(v) for v in s),
                                    axes) for side, c, s, axes in kidneys)
    anatomy = _draw_anatomy(
        rng, midline_x=midline_x, body_y=body_y, body_semi_x=body_semi_x, body_semi_y=body_semi_y,
        fat_mm=fat_mm, muscle_mm=muscle_mm, spine_y=spine_y, vertebra_rx=vertebra_rx,
        z_extent=z_extent, right_kidney_z=right_z, left_kidney_z=left_z)

    # tumours: 1-3; the first 15-60 mm, further ones 5-40 mm, log-uniform
    n_tumors = int(rng.choice((1, 2, 3), p=(0.7, 0.2, 0.1)))
    primary = int(rng.integers(len(kidney_specs)))
    tumors = []
    for i in range(n_tumors):
        host = primary if (i == 0 or rng.random() < 0.7) else int(rng.integers(len(kidney_specs)))
        k = kidney_specs[host]
        lo, hi = (15.0, 60.0) if i == 0 else (5.0, 40.0)
        diameter = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        radius = diameter / 2
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        if direction[1] > 0.6:  # not straight into the hilum
            direction[1] = -direction[1]
        axes = np.asarray(k.axes)
        semi = np.asarray(k.semi_axes_mm)
        surface = float(1.0 / np.sqrt(((direction / semi) ** 2).sum()))  # centre->surface, mm
        exophytic = bool(rng.random() < 0.5)
        dist = surface + rng.uniform(0.0, 0.5) * radius if exophytic \
            else max(0.0, surface - rng.uniform(0.5, 0.9) * radius)
        center = np.asarray(k.center_mm) + axes.T @ (direction * dist)
        lumps = tuple((tuple(float(v) for v in d / np.linalg.norm(d)), float(rng.uniform(1.5, 3.0)),
                       float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.03, 0.08)))
                      for d in rng.normal(size=(3, 3)))
        stretch = tuple(float(v) for v in rng.uniform(0.9, 1.1, size=3))
        tumors.append(TumorSpec(k.side, tuple(float(v) for v in center), diameter, exophytic,
                                lumps, stretch))
    hu = _draw_hu(rng)
    noise_sigma = float(rng.uniform(10, 20))
    return PhantomSpec(seed, (int(num_slices), size, size), spacing, anatomy, kidney_specs,
                       tuple(tumors), hu, noise_sigma)


def phantom_spacing(seed: int, **kwargs) -> tuple[float, float, float]:
    """``(z, y, x)`` spacing in mm of ``make_phantom(seed, **kwargs)``, without rendering it."""
    kwargs.pop("return_tissues", None)
    return phantom_spec(seed, **kwargs).spacing


# ------------------------------------------------------------------------------------------------
# rendering helpers
# ------------------------------------------------------------------------------------------------


class _SmoothField:
    """A smooth Gaussian random field with unit variance and correlation length ``corr_mm``.

    Separable: random values on a coarse node grid (spacing ``corr_mm``), interpolated with
    normalised Gaussian weights (sigma ``corr_mm``, truncated at 3.5 sigma) along each axis. The
    in-plane interpolation of every node slice is done once (two matrix products per node slice);
    a slice of the volume is then a weighted sum of the ~7 node slices around it.
    """

    def __init__(self, rng: np.random.Generator, shape, spacing, corr_mm: float):
        weights = []
        nodes_shape = []
        for n, s in zip(shape, spacing):
            coords = (np.arange(n) + 0.5) * s
            n_nodes = int(math.ceil(n * s / corr_mm)) + 4
            nodes = (np.arange(n_nodes) - 2) * corr_mm
            r = (coords[:, None] - nodes[None, :]) / corr_mm
            w = np.where(np.abs(r) <= 3.5, np.exp(-0.5 * r ** 2), 0.0)
            w /= np.sqrt((w ** 2).sum(axis=1, keepdims=True))
            weights.append(w.astype(np.float32))
            nodes_shape.append(n_nodes)
        nodes = rng.standard_normal(nodes_shape, dtype=np.float32)
        self.wz = weights[0]
        nz_w = self.wz != 0
        self.band = [(int(np.argmax(row)), int(len(row) - np.argmax(row[::-1]))) for row in nz_w]
        # in-plane interpolation of each node slice, with sparse (banded) weights: (Nz, Y, X)
        from scipy import sparse

        wy, wx = sparse.csr_matrix(weights[1]), sparse.csr_matrix(weights[2])
        n_z, n_y, n_x = nodes_shape
        t = wy @ nodes.transpose(1, 0, 2).reshape(n_y, n_z * n_x)            # (Y, Nz * Nx)
        t = t.reshape(shape[1], n_z, n_x).transpose(2, 1, 0).reshape(n_x, -1)  # (Nx, Nz * Y)
        t = (wx @ t).reshape(shape[2], n_z, shape[1])                          # (X, Nz, Y)
        self.planes = np.ascontiguousarray(t.transpose(1, 2, 0), dtype=np.float32)

    def block(self, zs: slice, ys: slice = slice(None), xs: slice = slice(None)) -> np.ndarray:
        """The field on the box ``[zs, ys, xs]`` (slices with step 1), float32."""
        ks = range(*zs.indices(self.wz.shape[0]))
        planes = self.planes[:, ys, xs]
        out = np.empty((len(ks),) + planes.shape[1:], np.float32)
        for i, k in enumerate(ks):
            j0, j1 = self.band[k]
            out[i] = np.tensordot(self.wz[k, j0:j1], planes[j0:j1], axes=(0, 0))
        return out


def _coords(n: int, step: float, centred: bool) -> np.ndarray:
    c = (np.arange(n, dtype=np.float32) + 0.5) * step
    return c - n * step / 2 if centred else c


def _span(coords: np.ndarray, lo: float, hi: float) -> slice:
    return slice(int(np.searchsorted(coords, lo)), int(np.searchsorted(coords, hi, side="right")))


def _box(center, half, zc, yc, xc):
    """Index slices of the voxels within ``center +- half`` (each (z, y, x), mm)."""
    return tuple(_span(c, m - h, m + h) for c, m, h in zip((zc, yc, xc), center, half))


def _empty(box) -> bool:
    return any(s.stop <= s.start for s in box)


class _Grid:
    def __init__(self, shape, spacing):
        self.shape, self.spacing = tuple(shape), tuple(float(s) for s in spacing)
        self.z = _coords(shape[0], spacing[0], centred=False)
        self.y = _coords(shape[1], spacing[1], centred=True)
        self.x = _coords(shape[2], spacing[2], centred=True)

    def mesh(self, box):
        zs, ys, xs = box
        return self.z[zs][:, None, None], self.y[ys][None, :, None], self.x[xs][None, None, :]


def _paint_background(tis: np.ndarray, z0: int, grid: _Grid, an: Anatomy, fine: _SmoothField) -> None:
    """Body, muscles, spine, ribs, vessels and organs of slices ``z0 : z0 + len(tis)`` (in place)."""
    def put(tissue: str, where: np.ndarray) -> None:  # broadcasts a (1, Y, X) mask over the slab
        np.copyto(tis, _T[tissue], where=where)

    nz = tis.shape[0]
    zz = grid.z[z0:z0 + nz][:, None, None]
    yy, xx = grid.y[None, :, None], grid.x[None, None, :]
    amp, period, phase = an.body_wobble
    scale = 1.0 + amp * np.sin(2 * np.pi * zz / period + phase)
    ax, ay = an.body_semi_x * scale, an.body_semi_y * scale
    u2 = (xx - an.midline_x) ** 2
    v2 = (yy - an.body_y) ** 2
    put("fat", u2 / ax ** 2 + v2 / ay ** 2 <= 1)
    wall = u2 / (ax - an.fat_mm) ** 2 + v2 / (ay - 0.8 * an.fat_mm) ** 2
    put("muscle", wall <= 1)
    cax, cay = ax - an.fat_mm - an.muscle_mm, ay - 0.8 * an.fat_mm - an.muscle_mm
    cavity = u2 / cax ** 2 + v2 / cay ** 2 <= 1
    put("fat", cavity)

    # ribs: oblique stripes in the outer muscle wall of the upper slices, descending anteriorly
    from_back = np.abs(np.pi / 2 - np.arctan2(yy - an.body_y, np.abs(xx - an.midline_x)))
    a = from_back / np.pi  # 0 at the spine, ~1 anteriorly
    zr = zz + an.rib_phase_mm - an.rib_drop_mm * a
    rib = ((wall > 0.8) & (wall <= 0.93) & (a > 0.2) & (a < 0.85)
           & (np.mod(zr, an.rib_pitch_mm) < 8.0) & (zz - an.rib_drop_mm * a < an.rib_end_z))
    put("bone", rib)

    sy, mx = an.spine_y, an.midline_x
    vx, vy = an.vertebra_semi
    # back muscles, quadratus lumborum, psoas (psoas grows inferiorly); literals are mm, adult sizes
    put("muscle", ((xx - mx) / 48) ** 2 + ((yy - (sy + vy + 40)) / 30) ** 2 <= 1)
    for s in (-1, 1):
        put("muscle", ((xx - mx - s * 55) / 20) ** 2 + ((yy - sy - 28) / 12) ** 2 <= 1)
        t = zz / max(grid.z[-1], 1.0)
        r = an.psoas_radius_mm[0] + (an.psoas_radius_mm[1] - an.psoas_radius_mm[0]) * t
        put("muscle", (xx - mx - s * (vx + 0.9 * r)) ** 2 + (yy - sy - 2) ** 2 <= r ** 2)
    # vertebra: body (cortex + cancellous, or a disc), canal, arch, spinous + transverse processes
    level = np.mod(zz - an.vertebra_phase_mm, an.vertebra_period_mm)   # (nz, 1, 1)
    is_disc = level < an.disc_mm
    vb = ((xx - mx) / vx) ** 2 + ((yy - sy) / vy) ** 2
    put("bone", (vb <= 1) & ~is_disc)
    put("cancellous_bone", (vb <= (1 - 2.5 / vy) ** 2) & ~is_disc)
    put("disc", (vb <= 1) & is_disc)
    cy = sy + vy + 9
    rc2 = (xx - mx) ** 2 + (yy - cy) ** 2
    put("bone", (rc2 >= 64) & (rc2 <= 15 ** 2) & (yy > cy - 3))
    put("csf", rc2 < 64)
    put("bone", (np.abs(xx - mx) < 4) & (yy > cy + 13) & (yy < cy + 42))
    transverse = (level > 0.35 * an.vertebra_period_mm) & (level < 0.6 * an.vertebra_period_mm)
    put("bone", transverse & (np.abs(yy - sy - vy) < 4) & (np.abs(xx - mx) > vx - 2)
        & (np.abs(xx - mx) < vx + 28))
    # aorta and IVC
    ya, xa, ra = an.aorta
    put("artery", (xx - xa) ** 2 + (yy - ya) ** 2 <= ra ** 2)
    yv, xv, ryv, rxv = an.ivc
    put("vein", ((xx - xv) / rxv) ** 2 + ((yy - yv) / ryv) ** 2 <= 1)

    # organs and bowel, clipped to the abdominal cavity; bowel first so liver/spleen lie on top
    order = [o for o in an.organs if o.tissue == "bowel"] + [o for o in an.organs if o.tissue != "bowel"]
    zslice = slice(z0, z0 + nz)
    for org in order:
        box = _box(org.center_mm, org.semi_axes_mm, grid.z[zslice], grid.y, grid.x)
        if _empty(box):
            continue
        z, y, x = grid.z[zslice][box[0]][:, None, None], grid.y[box[1]][None, :, None], \
            grid.x[box[2]][None, None, :]
        (cz, cy_, cx), (sz, sy_, sx) = org.center_mm, org.semi_axes_mm
        rho = ((z - cz) / sz) ** 2 + ((y - cy_) / sy_) ** 2 + ((x - cx) / sx) ** 2
        inside = (rho <= 1) & cavity[box]
        sub = tis[box]
        if org.tissue != "bowel":
            sub[inside] = _T[org.tissue]
            continue
        wall_frac = (1 - 3.0 / min(org.semi_axes_mm)) ** 2
        lumen = inside & (rho < wall_frac)
        sub[inside] = _T["bowel_wall"]
        if org.content == "gas":
            sub[lumen] = _T["bowel_gas"]
        elif org.content == "fluid":
            sub[lumen] = _T["bowel_fluid"]
        elif org.content == "mixed":  # supine: gas rises anteriorly (small y)
            sub[lumen] = _T["bowel_fluid"]
            sub[lumen & (y < cy_ - 0.2 * sy_)] = _T["bowel_gas"]
        else:  # faeces: mottled gas in soft content
            sub[lumen] = _T["bowel_content"]
            mottle = fine.block(slice(z0 + box[0].start, z0 + box[0].stop), box[1], box[2])
            sub[lumen & (mottle > 0.9)] = _T["bowel_gas"]


def _rasterize_kidneys(spec: PhantomSpec, grid: _Grid) -> np.ndarray:
    """The label of a pure phantom: bean-shaped kidneys (1) and lumpy tumours (2)."""
    label = np.zeros(grid.shape, dtype=np.uint8)
    for k in spec.kidneys:
        half = np.full(3, max(k.semi_axes_mm) + 2.0)
        box = _box(k.center_mm, half, grid.z, grid.y, grid.x)
        if _empty(box):
            continue
        z, y, x = grid.mesh(box)
        d = (z - k.center_mm[0], y - k.center_mm[1], x - k.center_mm[2])
        a, b, c = k.semi_axes_mm
        q = [ax[0] * d[0] + ax[1] * d[1] + ax[2] * d[2] for ax in k.axes]  # local coordinates
        body = (q[0] / a) ** 2 + (q[1] / b) ** 2 + (q[2] / c) ** 2 <= 1
        notch = (q[0] / (0.35 * a)) ** 2 + ((q[1] - b) / (0.5 * b)) ** 2 + (q[2] / (0.6 * c)) ** 2 <= 1
        label[box][body & ~notch] = KIDNEY
    for t in spec.tumors:
        r = t.diameter_mm / 2
        box = _box(t.center_mm, np.full(3, 1.35 * r * max(t.stretch) + 1), grid.z, grid.y, grid.x)
        if _empty(box):
            continue
        z, y, x = grid.mesh(box)
        d = [(z - t.center_mm[0]) / t.stretch[0], (y - t.center_mm[1]) / t.stretch[1],
             (x - t.center_mm[2]) / t.stretch[2]]
        dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
        bump = 1.0
        for direction, freq, phase, amp in t.lumps:
            proj = (d[0] * direction[0] + d[1] * direction[1] + d[2] * direction[2]) / r
            bump = bump + amp * np.cos(freq * proj * np.pi + phase)
        label[box][dist <= r * bump] = TUMOR
    return label


class _Components:
    """26-connected components of a boolean volume, labelled on its bounding box only.

    Attributes:
        n: number of components; ``sizes[i]`` voxels of component ``i`` (0-based);
        objects: ``objects[i]`` its bounding box as slices of the full volume.
    """

    def __init__(self, mask: np.ndarray):
        spans = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        if any(len(v) == 0 for v in spans):
            self.crop = (slice(0, 0),) * 3
            self.labels, self.n = np.zeros((0, 0, 0), np.int32), 0
            self.sizes, self.objects = np.zeros(0, np.int64), []
            return
        self.crop = tuple(slice(int(v[0]), int(v[-1]) + 1) for v in spans)
        self.labels, self.n = ndimage.label(mask[self.crop], structure=np.ones((3, 3, 3), dtype=bool))
        self.sizes = np.bincount(self.labels.ravel(), minlength=self.n + 1)[1:]
        self.objects = [tuple(slice(s.start + c.start, s.stop + c.start) for s, c in zip(obj, self.crop))
                        for obj in ndimage.find_objects(self.labels)]

    def mask(self, i: int, box) -> np.ndarray:
        """Boolean mask of component ``i`` on ``box`` (slices of the full volume)."""
        out = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
        inter = [slice(max(b.start, c.start), min(b.stop, c.stop)) for b, c in zip(box, self.crop)]
        if any(s.stop <= s.start for s in inter):
            return out
        src = tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(inter, self.crop))
        dst = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inter, box))
        out[dst] = self.labels[src] == i + 1
        return out

    def voxels(self, i: int) -> np.ndarray:
        """``(n, 3)`` full-volume indices of component ``i``."""
        obj = self.objects[i]
        return np.argwhere(self.mask(i, obj)) + [s.start for s in obj]


def _pad(slices, pad_vox, shape):
    return tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(slices, pad_vox, shape))


def _paint_kidneys_and_tumors(tis, label, kc: _Components, grid: _Grid, an: Anatomy, rng,
                              slow: _SmoothField):
    """Kidney cortex/medulla/sinus, perirenal fat and tumours, driven by ``label`` only.

    Used unchanged by pure and label-conditioned phantoms. Returns one dict per tumour component
    (its voxel count, mean HU, necrosis) for the metadata.
    """
    sp = np.asarray(grid.spacing)
    tis[label == KIDNEY] = _T["renal_cortex"]
    big = [i for i in range(kc.n) if kc.sizes[i] * sp.prod() >= 500.0]  # >= 0.5 ml
    fat_pad = np.ceil((an.perirenal_fat_mm + 1) / sp).astype(int)
    n_pyr, pyr_period, pyr_phase1, pyr_phase2 = an.pyramids
    for i in big:
        box = _pad(kc.objects[i], fat_pad, grid.shape)
        own = kc.mask(i, box)
        sub_t, sub_l = tis[box], label[box]
        outside = ndimage.distance_transform_edt(~own, sampling=sp)
        fat = (outside > 0) & (outside <= an.perirenal_fat_mm) & np.isin(sub_t, _CAVITY) \
            & (sub_l == BACKGROUND)
        sub_t[fat] = _T["fat"]
        depth = ndimage.distance_transform_edt(own, sampling=sp)
        z, y, x = grid.mesh(box)
        idx = np.argwhere(own)
        cz, cy, cx = (idx.mean(axis=0) + [s.start for s in box] + 0.5) * sp \
            - [0, grid.shape[1] * sp[1] / 2, grid.shape[2] * sp[2] / 2]
        medial = 1.0 if cx < an.midline_x else -1.0
        half_width = max(1.0, (idx[:, 2].max() - idx[:, 2].min() + 1) * sp[2] / 2)
        kid = own & (sub_l == KIDNEY)
        sinus_depth = max(an.cortex_mm + 6.0, 0.5 * float(depth.max()))
        sinus = kid & (depth >= sinus_depth) & ((x - cx) * medial > -0.15 * half_width)
        phi = np.arctan2(y - cy, x - cx)
        pattern = np.cos(n_pyr * phi + pyr_phase1) + 0.8 * np.cos(2 * np.pi * (z - cz) / pyr_period
                                                                 + pyr_phase2)
        medulla = kid & (depth > an.cortex_mm) & ~sinus & (pattern > -0.2)
        sub_t[medulla] = _T["renal_medulla"]
        sub_t[sinus] = _T["renal_sinus"]
        urine = sinus & (slow.block(*box) > 0.3)
        sub_t[urine] = _T["urine"]
    # tumours: each 26-connected component of label == 2 gets its own appearance
    tc = _Components(label == TUMOR)
    info = []
    for j, obj in enumerate(tc.objects):
        own = tc.mask(j, obj)
        depth = ndimage.distance_transform_edt(own, sampling=sp)
        mean = float(rng.uniform(*_TUMOR_HU_RANGE))
        texture = float(rng.uniform(10, 25))
        core = float(rng.uniform(0.3, 0.6))
        dmax = float(depth.max())
        necrotic = bool(dmax >= 6.0 and rng.random() < 0.4)
        code = _TUMOR_BASE + j % _TUMOR_SLOTS
        sub_t = tis[obj]
        sub_t[own] = code
        if necrotic:
            sub_t[own & (depth >= (1 - core) * dmax)] = _T["necrosis"]
        info.append({"voxels": int(own.sum()), "mean_hu": round(mean, 1), "texture_hu": round(texture, 1),
                     "necrotic": necrotic, "code": code})
    return info


def _lut(spec_hu: dict, tumors: list[dict]):
    """Per-tissue-code mean HU and fine/slow texture amplitudes (tumour components included)."""
    mean = np.zeros(256, np.float32)
    fine = np.zeros(256, np.float32)
    slow = np.zeros(256, np.float32)
    for name, (_, a_fine, a_slow) in _HU_RANGES.items():
        code = _T[name]
        mean[code], fine[code], slow[code] = spec_hu[name], a_fine, a_slow
    for t in tumors:
        code = t["code"]
        mean[code], fine[code], slow[code] = t["mean_hu"], t["texture_hu"], 0.6 * t["texture_hu"]
    return mean, fine, slow


def _render(spec: PhantomSpec, label: np.ndarray | None):
    grid = _Grid(spec.shape, spec.spacing)
    rng_tex = _rng(spec.seed, 1)
    fine = _SmoothField(rng_tex, spec.shape, spec.spacing, corr_mm=3.0)
    slow = _SmoothField(rng_tex, spec.shape, spec.spacing, corr_mm=15.0)
    nz, ny, nx = spec.shape
    tis = np.zeros(spec.shape, np.uint8)
    slab = max(1, _SLAB_VOXELS // (ny * nx))
    for z0 in range(0, nz, slab):
        _paint_background(tis[z0:z0 + slab], z0, grid, spec.anatomy, fine)
    if label is None:
        label = _rasterize_kidneys(spec, grid)
    kc = _Components(label > 0)
    _paint_renal_vessels(tis, kc, grid, spec.anatomy)
    tumors = _paint_kidneys_and_tumors(tis, label, kc, grid, spec.anatomy, _rng(spec.seed, 2), slow)
    mean, amp_fine, amp_slow = _lut(spec.hu, tumors)
    image = np.empty(spec.shape, np.float32)
    for z0 in range(0, nz, slab):
        zs = slice(z0, min(nz, z0 + slab))
        t = tis[zs]
        image[zs] = mean[t] + amp_fine[t] * fine.block(zs) + amp_slow[t] * slow.block(zs)
    # partial-volume blur: the voxel's box (sigma 0.29 voxel) and the scanner's point spread
    sigma = [math.sqrt(0.29 ** 2 + 0.25 ** 2)] + [math.sqrt(0.29 ** 2 + (_PSF_MM / s) ** 2)
                                                    for s in spec.spacing[1:]]
    image = ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)
    rng_noise = _rng(spec.seed, 3)
    for z0 in range(0, nz, slab):
        zs = slice(z0, min(nz, z0 + slab))
        image[zs] += spec.noise_sigma * rng_noise.standard_normal(image[zs].shape, dtype=np.float32)
    np.clip(image, *_CT_RANGE, out=image)
    tis[tis >= _TUMOR_BASE] = _T["tumor"]
    for t in tumors:
        t.pop("code")
    return image, label, tis, tumors


def _paint_renal_vessels(tis, kc: _Components, grid: _Grid, an: Anatomy) -> None:
    """Renal artery and vein: tubes from each kidney's hilum to the aorta / IVC, in its mid slices."""
    sp = np.asarray(grid.spacing)
    for i in np.argsort(-kc.sizes)[:2]:
        if kc.sizes[i] * sp.prod() < 5000.0:  # < 5 ml: not a kidney
            continue
        idx = kc.voxels(i)
        cz, cy, cx = (idx.mean(axis=0) + 0.5) * sp - [0, grid.shape[1] * sp[1] / 2, grid.shape[2] * sp[2] / 2]
        medial = 1.0 if cx < an.midline_x else -1.0
        hx = cx + medial * 0.3 * (idx[:, 2].max() - idx[:, 2].min()) * sp[2]
        for (ty, tx), radius, code in (((an.aorta[0], an.aorta[1]), 3.0, _T["artery"]),
                                       ((an.ivc[0], an.ivc[1]), 4.5, _T["vein"])):
            zoff = -4.0 if code == _T["artery"] else 4.0
            p0 = np.array([cz + zoff, cy - 4.0, hx])
            p1 = np.array([cz + zoff, ty, tx])
            lo, hi = np.minimum(p0, p1) - radius - 1, np.maximum(p0, p1) + radius + 1
            box = _box((lo + hi) / 2, (hi - lo) / 2, grid.z, grid.y, grid.x)
            if _empty(box):
                continue
            z, y, x = grid.mesh(box)
            seg = p1 - p0
            tpar = ((z - p0[0]) * seg[0] + (y - p0[1]) * seg[1] + (x - p0[2]) * seg[2]) / max(seg @ seg, 1e-6)
            tpar = np.clip(tpar, 0, 1)
            dist2 = (z - p0[0] - tpar * seg[0]) ** 2 + (y - p0[1] - tpar * seg[1]) ** 2 \
                + (x - p0[2] - tpar * seg[2]) ** 2
            sub = tis[box]
            sub[(dist2 <= radius ** 2) & np.isin(sub, _CAVITY + (_T["muscle"],))] = code


# ------------------------------------------------------------------------------------------------
# public API: pure phantoms
# ------------------------------------------------------------------------------------------------


def render_phantom(spec: PhantomSpec, *, return_tissues: bool = False):
    """Render a :class:`PhantomSpec` to voxels (see :func:`make_phantom` for the outputs)."""
    image, label, tissues, _ = _render(spec, None)
    return (image, label, tissues) if return_tissues else (image, label)


def make_phantom(
    seed: int,
    *,
    size: int = 512,
    num_slices: int | None = None,
    slice_thickness: float | None = None,
    pixel_spacing: float | None = None,
    return_tissues: bool = False,
):
    """A synthetic KiTS-like abdominal CT case (stand-in for the KiTS19 data of MSAN paper, §2.1).

    The spacing is not returned (the contract is ``(image, label)``); it is
    ``phantom_spacing(seed, **same_kwargs)`` (or ``phantom_spec(...).spacing``), a cheap function
    of the same arguments. :func:`write_phantom_dataset` stores it in the NIfTI headers.

    Args:
        seed: non-negative integer; same seed and arguments give identical arrays.
        size: in-plane rows = columns (default 512). Same anatomy at every size (see
            :func:`phantom_spec`).
        num_slices: slice count override (default None: kidneys plus 20-80 mm margins at the drawn
            slice thickness, e.g. ~70 slices at 3 mm).
        slice_thickness: mm (default None: drawn like KiTS19: 0.5/1/2.5/3/5 mm).
        pixel_spacing: in-plane mm (default None: the case's field of view / ``size``, ~0.78 mm at
            512).
        return_tissues: also return the uint8 tissue map (codes in :data:`TISSUES`; default False).

    Returns:
        ``(image, label)`` or ``(image, label, tissues)``: image float32 ``(Z, Y, X)`` in HU (air
        -1000, fat ~-100, muscle ~50, kidney cortex 150-250, medulla 30-80, tumour 40-180, bone up
        to ~1000), label uint8 ``(Z, Y, X)`` in {0, 1, 2}.

    Raises:
        ConfigError: naming a bad argument.
    """
    spec = phantom_spec(seed, size=size, num_slices=num_slices, slice_thickness=slice_thickness,
                        pixel_spacing=pixel_spacing)
    return render_phantom(spec, return_tissues=return_tissues)


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="case")


def _case_seed(seed: int, k: int) -> int:
    """Seed of case ``k`` of a dataset drawn with ``seed`` (a 63-bit hash of the pair)."""
    state = np.random.SeedSequence([_SALT, int(seed), int(k)]).generate_state(1, np.uint64)
    return int(state[0]) >> 2


def _check_case_ids(case_ids, num_cases: int) -> list[str]:
    if case_ids is None:
        return [_case_id(k) for k in range(num_cases)]
    from kitsmsan.data.kits19 import normalize_case_id

    ids = [normalize_case_id(c) for c in case_ids]
    if len(ids) != num_cases:
        raise ConfigError(f"case_ids: {len(ids)} ids given for num_cases={num_cases}")
    if len(set(ids)) != len(ids):
        raise ConfigError("case_ids: duplicate case ids")
    return ids


def _refuse_foreign_cases(root: Path, ids: Sequence[str]) -> None:
    """Refuse to write phantoms over case folders that ``kitsmsan phantoms`` did not write.

    A case folder of ``ids`` that already holds files and is not listed in ``root/phantoms.json``
    is real (or foreign) data: writing a phantom there would replace it.

    Raises:
        DataError: naming ``root`` and the case folders; nothing is written.
    """
    listed: set[str] = set()
    meta_path = root / "phantoms.json"
    if meta_path.is_file():
        try:
            cases = json.loads(meta_path.read_text()).get("cases", {})
            listed = set(cases) if isinstance(cases, dict) else set()
        except (OSError, ValueError, AttributeError):
            listed = set()
    foreign = [cid for cid in ids
               if cid not in listed and (root / cid).is_dir() and any((root / cid).iterdir())]
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise DataError(f"{root}: holds case folders not written by kitsmsan phantoms ({shown}; not "
                        "listed in phantoms.json); refusing to overwrite them (choose a new folder)")


def _write_metadata(root: Path, kind: str, seed: int, entries: dict, extra: dict) -> None:
    meta_path = root / "phantoms.json"
    meta = {"generator": "kitsmsan.data.phantom", "kind": kind, "version": GENERATOR_VERSION,
            "seed": seed, **extra, "cases": {}}
    if meta_path.is_file():  # merge with an earlier run into the same folder
        try:
            old = json.loads(meta_path.read_text())
            if old.get("kind") == kind and old.get("version") == GENERATOR_VERSION:
                meta["cases"].update(old.get("cases", {}))
        except (OSError, ValueError):
            pass
    meta["cases"].update(entries)
    meta["cases"] = dict(sorted(meta["cases"].items()))
    atomic_write_json(meta_path, meta)


def write_phantom_dataset(
    root: str | Path,
    num_cases: int,
    seed: int = 0,
    *,
    size: int = 512,
    case_ids: Sequence[str | int] | None = None,
    num_slices: int | None = None,
    pixel_spacing: float | None = None,
    progress: bool = True,
) -> list[str]:
    """Write pure phantoms in the KiTS19 layout, plus ``phantoms.json``.

    Each case goes through :func:`kitsmsan.data.kits19.save_case` (float32 imaging, uint8
    segmentation, the official affine; atomic). Case ``k`` uses the seed derived from
    ``(seed, k)``, so case ``k`` does not depend on ``num_cases``. ``phantoms.json`` records the
    generator version, the dataset seed and, per case, its seed, shape, spacing, kidneys, tumours
    and the painted tumour components (merged with an existing file of the same kind/version).

    Args:
        root: output data folder (created).
        num_cases: number of cases (>= 1).
        seed: dataset seed (default 0).
        size: in-plane size (default 512).
        case_ids: ids to write (default ``case_00000`` ... in order); ``len == num_cases``.
        num_slices: slice count override for every case (default None: per case).
        pixel_spacing: in-plane spacing in mm for every case (default None: the whole abdomen's
            field of view at any ``size``, as :func:`make_phantom`). A finer spacing at a small
            ``size`` gives a smaller field of view centred on the abdomen (the CPU smoke data).
        progress: show a tqdm bar (default True).

    Returns:
        The case ids written.

    Raises:
        ConfigError: bad arguments (nothing written).
        DataError: ``root`` holds case folders of ``case_ids`` that are not listed in its
            ``phantoms.json`` (real data would be overwritten; nothing written).
    """
    num_cases = _check_positive(num_cases, "num_cases", integer=True)
    seed = _check_seed(seed)
    ids = _check_case_ids(case_ids, num_cases)
    phantom_spec(0, size=size, num_slices=num_slices, pixel_spacing=pixel_spacing)  # validates before writing
    root = Path(root)
    _refuse_foreign_cases(root, ids)
    entries = {}
    for k, cid in _progress(enumerate(ids), len(ids), "phantoms", progress):
        case_seed = _case_seed(seed, k)
        spec = phantom_spec(case_seed, size=size, num_slices=num_slices, pixel_spacing=pixel_spacing)
        image, label, _, tumors = _render(spec, None)
        save_case(root, cid, image, label, spec.spacing)
        entries[cid] = {**spec.to_dict(), "index": k, "tumor_components": tumors,
                        "kidney_voxels": int((label > 0).sum()), "tumor_voxels": int((label == TUMOR).sum())}
        _write_metadata(root, "pure", seed, {cid: entries[cid]}, {"size": size})
    return ids


# ------------------------------------------------------------------------------------------------
# public API: label-conditioned phantoms
# ------------------------------------------------------------------------------------------------


def resample_label_inplane(label: np.ndarray, spacing, size: int):
    """Nearest-neighbour in-plane resampling: the longer side becomes ``size`` pixels.

    The aspect ratio (hence square pixels) is kept: a 512 x 796 slice (case_00160) at size 128
    becomes 82 x 128. Slices are untouched.

    Returns:
        ``(label, spacing)``: uint8 ``(Z, Y', X')`` and the updated ``(z, y, x)`` mm.
    """
    size = _check_positive(size, "size", integer=True, minimum=1)
    _, ny, nx = label.shape
    f = size / max(ny, nx)
    new = (max(1, int(math.floor(ny * f + 0.5))), max(1, int(math.floor(nx * f + 0.5))))  # half up
    iy = np.minimum((np.arange(new[0]) + 0.5) * ny / new[0], ny - 1).astype(np.intp)
    ix = np.minimum((np.arange(new[1]) + 0.5) * nx / new[1], nx - 1).astype(np.intp)
    out = np.ascontiguousarray(label[:, iy][:, :, ix])
    return out, (float(spacing[0]), spacing[1] * ny / new[0], spacing[2] * nx / new[1])


def resample_label_z(label: np.ndarray, spacing, slice_thickness: float):
    """Nearest-neighbour resampling along z to about ``slice_thickness`` mm per slice.

    The number of slices becomes ``max(1, round(Z * z_spacing / slice_thickness))``; output slice
    ``k`` takes source slice ``floor((k + 0.5) * Z / Z')`` (the source slice under its centre). The
    z extent is kept exactly, so the new z spacing is ``Z * z_spacing / Z'`` — ``slice_thickness``
    up to rounding. In-plane pixels are untouched. Thin structures (a tumour smaller than the new
    slice thickness) can disappear, as in a real thick-slice scan.

    Args:
        label: ``(Z, Y, X)`` labels.
        spacing: ``(z, y, x)`` mm.
        slice_thickness: target z spacing in mm (> 0).

    Returns:
        ``(label, spacing)``: uint8 ``(Z', Y, X)`` and the updated ``(z, y, x)`` mm.

    Raises:
        ConfigError: ``slice_thickness`` is not a positive number.
    """
    thickness = _check_positive(slice_thickness, "slice_thickness")
    nz = label.shape[0]
    new = max(1, int(math.floor(nz * float(spacing[0]) / thickness + 0.5)))
    iz = np.minimum((np.arange(new) + 0.5) * nz / new, nz - 1).astype(np.intp)
    out = np.ascontiguousarray(label[iz], dtype=np.uint8)
    return out, (float(spacing[0]) * nz / new, float(spacing[1]), float(spacing[2]))


def _check_margin(value) -> float:
    """``z_margin_mm`` must be a finite number >= 0 (ConfigError otherwise)."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
    if bad or not math.isfinite(float(value)) or value < 0:
        raise ConfigError(f"z_margin_mm={value!r}: expected a number >= 0 (mm)")
    return float(value)


def crop_label_z(label: np.ndarray, spacing, z_margin_mm: float):
    """Crop the slices to the kidney region's z extent (``label > 0``) plus ``z_margin_mm`` each side.

    The margin is rounded up to whole slices and clipped to the volume; a label without kidney is
    returned whole. The slices kept are unchanged (no resampling).

    Args:
        label: ``(Z, Y, X)`` labels.
        spacing: ``(z, y, x)`` mm.
        z_margin_mm: margin above and below the kidneys, in mm (>= 0).

    Returns:
        ``(label, (z0, z1))``: the cropped ``(z1 - z0, Y, X)`` label and the source slice range.

    Raises:
        ConfigError: ``z_margin_mm`` is negative or not a number.
    """
    margin = _check_margin(z_margin_mm)
    nz = label.shape[0]
    rows = np.flatnonzero((label > 0).any(axis=(1, 2)))
    if not len(rows):
        return label, (0, nz)
    pad = int(math.ceil(margin / float(spacing[0]) - 1e-9))
    z0, z1 = max(0, int(rows[0]) - pad), min(nz, int(rows[-1]) + 1 + pad)
    return np.ascontiguousarray(label[z0:z1]), (z0, z1)


def _spec_from_label(label: np.ndarray, spacing, seed: int) -> PhantomSpec:
    """Body, spine and organs placed around the kidneys of a real label."""
    rng = _rng(seed, 4)
    grid = _Grid(label.shape, spacing)
    sp = np.asarray(grid.spacing)
    kc = _Components(label > 0)
    sizes = kc.sizes
    offset = np.array([0.0, grid.shape[1] * sp[1] / 2, grid.shape[2] * sp[2] / 2])
    fg = np.argwhere(label > 0)
    if len(fg):
        lo_mm, hi_mm = (fg.min(axis=0) + 0.5) * sp - offset, (fg.max(axis=0) + 0.5) * sp - offset
    else:  # an empty label: a body in the middle of the field of view
        lo_mm, hi_mm = np.array([0.0, -10, -60]), np.array([grid.z[-1], 30, 60])
    kid = []
    if len(sizes):
        for i in np.argsort(-sizes)[:2]:
            if sizes[i] >= 0.2 * sizes.max():
                idx = kc.voxels(i)
                c = (idx.mean(axis=0) + 0.5) * sp - offset
                w = (idx[:, 2].max() - idx[:, 2].min() + 1) * sp[2] / 2
                kid.append((c, w))
    if len(kid) == 2:
        midline = float((kid[0][0][2] + kid[1][0][2]) / 2)
    elif len(kid) == 1:
        cx = kid[0][0][2]
        midline = float(cx - np.sign(cx) * 70.0) if abs(cx) > 20 else float(cx + 70.0)
    else:
        midline = float((lo_mm[2] + hi_mm[2]) / 2)
    ky = float(np.mean([c[1] for c, _ in kid])) if kid else float(hi_mm[1] - 20)
    spine_y = ky - float(rng.uniform(5, 15))
    gaps = [abs(c[2] - midline) - w for c, w in kid]
    vertebra_rx = float(np.clip(min(gaps, default=30.0) - 8.0, 12.0, 24.0))
    fat_mm = float(rng.uniform(8, 40))
    muscle_mm = float(rng.uniform(8, 15))
    margin = fat_mm + muscle_mm + float(rng.uniform(15, 40))
    body_semi_x = max(abs(hi_mm[2] - midline), abs(lo_mm[2] - midline)) + margin
    body_semi_x = max(body_semi_x, float(rng.uniform(135, 175)))
    back = max(spine_y + float(rng.uniform(75, 95)), hi_mm[1] + margin)
    body_semi_y = max(body_semi_x * float(rng.uniform(0.62, 0.8)), (back - lo_mm[1] + margin) / 2)
    body_y = back - body_semi_y
    # liver / spleen height: the right (small x) and left kidney's z, mirrored when one is missing
    zs = {"right": None, "left": None}
    for c, _ in kid:
        zs["right" if c[2] < midline else "left"] = float(c[0])
    z_mid = float((lo_mm[0] + hi_mm[0]) / 2)
    right_z = zs["right"] if zs["right"] is not None else (zs["left"] if zs["left"] is not None else z_mid)
    left_z = zs["left"] if zs["left"] is not None else right_z
    anatomy = _draw_anatomy(
        rng, midline_x=midline, body_y=body_y, body_semi_x=body_semi_x, body_semi_y=body_semi_y,
        fat_mm=fat_mm, muscle_mm=muscle_mm, spine_y=spine_y, vertebra_rx=vertebra_rx,
        z_extent=float(grid.shape[0] * sp[0]), right_kidney_z=right_z, left_kidney_z=left_z)
    return PhantomSpec(int(seed), tuple(int(v) for v in label.shape), tuple(float(s) for s in sp),
                       anatomy, (), (), _draw_hu(rng), float(rng.uniform(10, 20)))


def _check_spacing(spacing, name="spacing") -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}={spacing!r}: expected three numbers (z, y, x) in mm") from exc
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise DataError(f"{name}={spacing!r}: expected three positive finite numbers (z, y, x)")
    return values


def phantom_from_label(label: np.ndarray, spacing, seed: int, *, size: int | None = None,
                       slice_thickness: float | None = None, z_margin_mm: float | None = None,
                       return_tissues: bool = False):
    """Synthesise CT intensities around a real segmentation (a "label-conditioned" phantom).

    The label is kept exactly (``size=None``); a body containing the kidneys, the spine between and
    in front of their posterior edge, back muscles, psoas, vessels (renal vessels to each hilum),
    liver beside the right kidney, spleen above the left, bowel, fat and noise are drawn around it,
    and the kidneys and tumours are painted with the same cortex/medulla/sinus and tumour textures
    as the pure phantoms (:func:`make_phantom`).

    Args:
        label: ``(Z, Y, X)`` integer labels in {0, 1, 2} (uint8 or uint16, as in the KiTS19 files).
        spacing: ``(z, y, x)`` mm of ``label``.
        seed: non-negative integer; same inputs and seed give identical images.
        size: if given, resample in-plane first (nearest neighbour, the longer side becomes
            ``size``; see :func:`resample_label_inplane`) and update the spacing (default None:
            keep the label's grid).
        slice_thickness: if given, resample along z by nearest neighbour to about this many mm per
            slice (:func:`resample_label_z`) and update the spacing (default None: keep the slices —
            the label stays exact). For fast CPU runs: a 611-slice 0.5 mm case
            becomes ~60 slices at 5 mm.
        z_margin_mm: if given, first crop the slices to the kidneys' z extent plus this margin in
            mm (:func:`crop_label_z`; default None: keep every slice). Applied before
            ``slice_thickness``.
        return_tissues: also return the tissue map (default False).

    Returns:
        ``(image, label, spacing)`` (or ``(image, label, spacing, tissues)``): float32 HU, the
        (possibly resampled) uint8 label, ``(z, y, x)`` mm.

    Raises:
        DataError: if ``label`` is not 3-D or holds values outside {0, 1, 2}, or ``spacing`` is bad.
        ConfigError: bad ``seed``, ``size``, ``slice_thickness`` or ``z_margin_mm``.
    """
    seed = _check_seed(seed)
    if slice_thickness is not None:
        _check_positive(slice_thickness, "slice_thickness")
    if z_margin_mm is not None:
        _check_margin(z_margin_mm)
    label = np.asarray(label)
    if label.ndim != 3 or min(label.shape) < 1:
        raise DataError(f"label: expected a non-empty 3-D (Z, Y, X) array, got shape {label.shape}")
    label = check_label_values(label, "label")
    spacing = _check_spacing(spacing)
    if z_margin_mm is not None:
        label, _ = crop_label_z(label, spacing, z_margin_mm)
    if slice_thickness is not None:
        label, spacing = resample_label_z(label, spacing, slice_thickness)
    if size is not None:
        label, spacing = resample_label_inplane(label, spacing, size)
    spec = _spec_from_label(label, spacing, seed)
    image, label_out, tissues, _ = _render(spec, label)
    return (image, label_out, spec.spacing, tissues) if return_tissues else \
        (image, label_out, spec.spacing)


def write_label_conditioned_dataset(
    labels_root: str | Path,
    out_root: str | Path,
    *,
    case_ids: Iterable[str | int] | None = None,
    size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    slice_thickness: float | None = None,
    z_margin_mm: float | None = None,
) -> list[str]:
    """Write label-conditioned phantoms of real KiTS19 segmentations in the KiTS19 layout.

    Reads ``labels_root/case_XXXXX/segmentation.nii.gz`` (labels-only folders are fine), writes
    ``out_root/case_XXXXX/{imaging,segmentation}.nii.gz`` with the official header convention and
    ``phantoms.json`` (kind ``"label-conditioned"``, the source folder, per-case seed and
    spacing). Case ``case_000NN`` uses the seed derived from ``(seed, NN)``. Attribute KiTS19
    (CC BY-NC-SA 4.0) when you use the result: the segmentations are theirs.

    Args:
        labels_root: folder with KiTS19 case folders holding ``segmentation.nii.gz``.
        out_root: output folder (may not be ``labels_root``).
        case_ids: which cases (ints or ids; default all with a segmentation).
        size: in-plane resampling (default None: keep the real grid).
        seed: dataset seed (default 0).
        progress: tqdm bar (default True).
        slice_thickness: z resampling to about this many mm per slice, nearest neighbour (default
            None: keep the real slices). See :func:`phantom_from_label`.
        z_margin_mm: crop the slices to the kidneys' z extent plus this margin in mm (default None:
            no crop); ``phantoms.json`` records the source slice range per case (``z_range``).

    Returns:
        The case ids written.

    Raises:
        DataError: missing/corrupt label files (named), ``out_root`` equal to ``labels_root``, or
            ``out_root`` holding case folders not listed in its ``phantoms.json`` (nothing written).
        ConfigError: bad ``seed``, ``size``, ``slice_thickness`` or ``z_margin_mm``.
    """
    from kitsmsan.data.kits19 import case_number, normalize_case_id

    seed = _check_seed(seed)
    _check_positive(size, "size", integer=True, minimum=1)
    if slice_thickness is not None:
        _check_positive(slice_thickness, "slice_thickness")
    if z_margin_mm is not None:
        _check_margin(z_margin_mm)
    labels_root, out_root = Path(labels_root), Path(out_root)
    if out_root.resolve() == labels_root.resolve():
        raise DataError(f"{out_root}: the output folder must differ from the labels folder")
    available = list_cases(labels_root, require_imaging=False)
    ids = available if case_ids is None else [normalize_case_id(c) for c in case_ids]
    missing = [c for c in ids if c not in available]
    if missing:
        raise DataError(f"{labels_root}: no segmentation for {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else ""))
    _refuse_foreign_cases(out_root, ids)
    written = []
    for cid in _progress(ids, len(ids), "label-conditioned phantoms", progress):
        case = load_case(labels_root / cid, load_image=False)
        case_seed = _case_seed(seed, case_number(cid))
        source = case.label
        z_range = (0, source.shape[0])
        if z_margin_mm is not None:
            source, z_range = crop_label_z(source, case.spacing, z_margin_mm)
        image, label, spacing = phantom_from_label(source, case.spacing, case_seed, size=size,
                                                   slice_thickness=slice_thickness)
        save_case(out_root, cid, image, label, spacing)
        entry = {"seed": case_seed, "shape": list(label.shape),
                 "spacing": [round(float(s), 6) for s in spacing],
                 "source_shape": list(case.label.shape),
                 "source_spacing": [round(float(s), 6) for s in case.spacing],
                 "z_range": [int(z_range[0]), int(z_range[1])],
                 "kidney_voxels": int((label > 0).sum()), "tumor_voxels": int((label == TUMOR).sum())}
        _write_metadata(out_root, "label-conditioned", seed, {cid: entry},
                        {"size": size, "slice_thickness": slice_thickness, "z_margin_mm": z_margin_mm,
                         "labels_root": str(labels_root),
                         "attribution": "Segmentations: KiTS19 challenge (Heller et al. 2019), "
                                        "CC BY-NC-SA 4.0"})
        written.append(cid)
    return written
