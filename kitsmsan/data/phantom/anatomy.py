"""The case description of a phantom, without voxels: spacing, shape, anatomy, kidneys, tumours and
tissue HU, drawn from a seed (:func:`phantom_spec`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from kitsmsan.errors import ConfigError

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
    """A drawn phantom case: everything :func:`~kitsmsan.data.phantom.writer.render_phantom` needs, and the metadata to record.

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


def _draw_kidneys(rng: np.random.Generator, midline_x: float, spine_y: float) -> tuple[list, float, float]:
    """Kidneys 104-128 mm long, centres 55-75 mm from the midline, the right one lower; sometimes one.

    Returns:
        ``(kidneys, left_z, right_z)``: ``[side, centre (z, y, x) mm, semi-axes mm, axes]`` per kidney
        (z from the left kidney's centre) and the two kidneys' z.
    """
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
    return kidneys, left_z, right_z


def _draw_tumors(rng: np.random.Generator, kidney_specs: tuple[KidneySpec, ...]) -> list[TumorSpec]:
    """1-3 tumours: the first 15-60 mm, further ones 5-40 mm (log-uniform), half of them exophytic."""
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
    return tumors


def phantom_spec(
    seed: int,
    *,
    size: int = 512,
    num_slices: int | None = None,
    slice_thickness: float | None = None,
    pixel_spacing: float | None = None,
) -> PhantomSpec:
    """Draw a pure phantom case (no voxels): the description :func:`~kitsmsan.data.phantom.writer.make_phantom` renders.

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

    kidneys, left_z, right_z = _draw_kidneys(rng, midline_x, spine_y)
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

    tumors = _draw_tumors(rng, kidney_specs)
    hu = _draw_hu(rng)
    noise_sigma = float(rng.uniform(10, 20))
    return PhantomSpec(seed, (int(num_slices), size, size), spacing, anatomy, kidney_specs,
                       tuple(tumors), hu, noise_sigma)


def phantom_spacing(seed: int, **kwargs) -> tuple[float, float, float]:
    """``(z, y, x)`` spacing in mm of ``make_phantom(seed, **kwargs)``, without rendering it."""
    kwargs.pop("return_tissues", None)
    return phantom_spec(seed, **kwargs).spacing


