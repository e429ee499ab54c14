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

from kitsmsan.data.phantom.anatomy import (
    GENERATOR_VERSION,
    SLICE_THICKNESS_CHOICES,
    SLICE_THICKNESS_WEIGHTS,
    TISSUES,
    KidneySpec,
    PhantomSpec,
    TumorSpec,
    phantom_spacing,
    phantom_spec,
)
from kitsmsan.data.phantom.label_conditioned import (
    crop_label_z,
    phantom_from_label,
    resample_label_inplane,
    resample_label_z,
    write_label_conditioned_dataset,
)
from kitsmsan.data.phantom.writer import make_phantom, render_phantom, write_phantom_dataset

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
