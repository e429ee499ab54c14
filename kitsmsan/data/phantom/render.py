"""Rendering a :class:`~kitsmsan.data.phantom.anatomy.PhantomSpec` to voxels: smooth texture fields,
the background anatomy, kidneys and tumours, vessels, partial-volume blur and noise."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, sparse

from kitsmsan.data.kits19 import (
    BACKGROUND,
    KIDNEY,
    TUMOR,
)
from kitsmsan.data.phantom.anatomy import (
    _CAVITY,
    _CT_RANGE,
    _HU_RANGES,
    _PSF_MM,
    _SLAB_VOXELS,
    _T,
    _TUMOR_BASE,
    _TUMOR_HU_RANGE,
    _TUMOR_SLOTS,
    Anatomy,
    PhantomSpec,
    _rng,
)


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

    _paint_organs(tis, z0, grid, an, fine, cavity)


def _paint_organs(tis: np.ndarray, z0: int, grid: _Grid, an: Anatomy, fine: _SmoothField,
                  cavity: np.ndarray) -> None:
    """Organs and bowel of slices ``z0 : z0 + len(tis)``, clipped to the abdominal ``cavity`` (in place);
    bowel first so that liver and spleen lie on top."""
    order = [o for o in an.organs if o.tissue == "bowel"] + [o for o in an.organs if o.tissue != "bowel"]
    zslice = slice(z0, z0 + tis.shape[0])
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


