"""Write the six book notebooks of ``notebooks/`` from this one script (issue #5).

    python scripts/make_notebooks.py            # (re)write notebooks/0*.ipynb
    python scripts/make_notebooks.py --check    # exit 1 if a committed notebook differs from this script

The notebooks are committed without outputs; this generator is their source of truth, so a change
to a notebook is a readable diff here. Every notebook

* starts with a ``parameters``-tagged cell of primitives (papermill injects the book's values after
  it; the values of the book are in ``scripts/notebook_params.json``);
* resolves paths against the repository root (papermill runs from the root, Jupyter and nbval from
  ``notebooks/``) and gets its data from :func:`kitsmsan.reproduce.make_data`, the same data as
  ``kitsmsan reproduce --preset smoke``: pure phantoms, or label-conditioned phantoms when real
  KiTS19 segmentations are available (``labels_dir`` or ``$KITSMSAN_LABELS``), or the folder named by
  ``data_root`` (KiTS19 imaging on a GPU);
* imports everything from :mod:`kitsmsan`, defines no model, loss or metric, and shows package code
  with :func:`kitsmsan.viz.show_source` (never a copy).

The default parameters are a *quick look* (a few seconds per notebook, what ``pytest --nbval-lax
notebooks/`` runs); the book runs the smoke preset (``notebook_params.json``); on a GPU set
``smoke=False`` and ``data_root`` to KiTS19.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def md(text: str):
    """A Markdown cell from dedented text."""
    return new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str, *tags: str):
    """A code cell from dedented text, with optional cell tags."""
    cell = new_code_cell(textwrap.dedent(text).strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def params(text: str):
    """The papermill ``parameters`` cell."""
    return code(text, "parameters")


# ------------------------------------------------------------------------------------------------
# shared cells
# ------------------------------------------------------------------------------------------------

DATA_PARAMS = '''
smoke = True               # True: CPU demonstration on phantoms; False: the paper's settings (GPU, KiTS19)
work_dir = "data/book"     # phantoms are written to work_dir/data once, the cache to work_dir/cache
data_root = ""             # an existing KiTS19-layout folder to use instead (KiTS19 imaging on a GPU)
labels_dir = ""            # real KiTS19 segmentations: label-conditioned phantoms (empty: $KITSMSAN_LABELS)
cache_dir = ""             # empty: work_dir/cache
train_cases = ""           # empty: the split that comes with the data (phantoms 0-13, KiTS19 0-179)
test_cases = ""            # empty: likewise (phantoms 14-19; KiTS19 and real-anatomy phantoms 180-189)
seed = 0
'''

SETUP = '''
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from IPython.display import HTML, Markdown, display

from kitsmsan import viz
from kitsmsan.data.dataset import split_cases
from kitsmsan.data.kits19 import list_cases, load_case
from kitsmsan.data.preprocess import prepare_cache
from kitsmsan.reproduce import labels_root_from_env, make_data

# papermill (the book) runs from the repository root; Jupyter and nbval from notebooks/
ROOT = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
WORK = ROOT / work_dir
data = make_data("smoke" if smoke else "paper", WORK, data=ROOT / data_root if data_root else None,
                 labels=None if data_root else labels_root_from_env(labels_dir or None), progress=False)
DATA = Path(data["root"])
CACHE = ROOT / cache_dir if cache_dir else WORK / "cache"
split = split_cases(list_cases(DATA), train=train_cases or data["train"], test=test_cases or data["test"])
index = prepare_cache(DATA, CACHE, case_ids=split["train"] + split["test"], progress=False)
torch.manual_seed(seed)
DATA_KIND = data["kind"]
display(Markdown(f"**Data on this page: {DATA_KIND}** (`{os.path.relpath(DATA, ROOT)}`): "
                 f"{len(split['train'])} training cases, {len(split['test'])} test cases "
                 f"({', '.join(split['test'])})."))
'''

RUN_PARAMS = '''
runs_dir = "runs/notebooks"  # the run folders <runs_dir>/<variant> (the book: runs/book)
variants = "unet3d,msan_v1,msan_v1_ds,msan_v2,msan_v2_ds"
train_missing = True       # train a short run for a missing variant (the book sets False: it never retrains)
missing_iters = 20         # iterations of such a run
device = "cpu"             # cpu, cuda or auto
'''

# load the five runs the training notebook wrote (or, in a quick look, train short ones)
RUNS_CELL = '''
from kitsmsan.errors import DataError
from kitsmsan.inference import load_model
from kitsmsan.train import TrainConfig, train
from kitsmsan.train.loop import run_state

RUNS = ROOT / runs_dir
VARIANTS = [v.strip() for v in variants.split(",") if v.strip()]
missing = [v for v in VARIANTS if run_state(RUNS / v) != "done"]
if missing and not train_missing:
    raise DataError(
        f"{RUNS}: no finished run for {', '.join(missing)}. Make them with the training notebook "
        f"(03_training.ipynb, variant=...), `make book`, or for each variant: kitsmsan train --variant VARIANT "
        f"--data {os.path.relpath(DATA, ROOT)} --cache {os.path.relpath(CACHE, ROOT)} --out {runs_dir}")
for v in missing:
    print(f"{os.path.relpath(RUNS / v, ROOT)}: no finished run; training a {missing_iters}-iteration "
          f"smoke run now (train_missing=True)")
    train(TrainConfig.from_preset("smoke", variant=v, data_root=str(DATA), cache_dir=str(CACHE),
                                  run_dir=str(RUNS / v), train_cases=train_cases or data["train"],
                                  test_cases=test_cases or data["test"], num_iters=missing_iters,
                                  seed=seed, device=device, progress=False), resume=True)
runs = {v: {"config": json.loads((RUNS / v / "config.json").read_text()),
            "summary": json.loads((RUNS / v / "summary.json").read_text()),
            "env": json.loads((RUNS / v / "env.json").read_text())} for v in VARIANTS}
# the last checkpoint: the test cases are never used to choose a checkpoint (as kitsmsan reproduce)
models = {v: load_model(RUNS / v, device=device if device != "auto" else "cpu", checkpoint="last")
          for v in VARIANTS}
pd.DataFrame([{"variant": v, "iterations": r["summary"]["iterations"],
               "train seconds": r["summary"]["seconds"], "device": r["env"].get("device"),
               "commit": r["env"].get("commit"), "run folder": os.path.relpath(RUNS / v, ROOT)}
              for v, r in runs.items()]).set_index("variant")
'''


def notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNEL)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


# ------------------------------------------------------------------------------------------------
# 01 data exploration
# ------------------------------------------------------------------------------------------------


def nb01():
    return notebook([
        md('''
        # The data: KiTS19, its conventions, and the phantoms

        The paper trains and tests on KiTS19 (MSAN paper, §2.1): 210 labelled abdominal CT scans of
        patients with kidney tumours, of which the authors use the first 180 for training and cases
        180–189 as their test set. Before any network, this chapter looks at what those volumes *are*:
        how they are stored and oriented, how thick their slices are, which Hounsfield units (HU) the
        kidneys and tumours occupy — the reason for the paper's clipping window of [-200, 500] HU — and
        how large kidneys and tumours are.

        The 27 GB of KiTS19 imaging do not fit a laptop, so the book runs on **phantoms**: synthetic
        CT volumes written in exactly the KiTS19 layout (`kitsmsan.data.phantom`). When the real KiTS19
        segmentations are available (they are small and public), the phantoms are drawn around the real
        kidney and tumour shapes instead, and the statistics of the real labels are shown beside ours.
        Every page says which data it used.
        '''),
        params(DATA_PARAMS + '''
case_index = 0             # which case of the training split is shown in detail
label_stats_csv = "book/data/kits19_label_stats.csv"   # statistics of the real KiTS19 labels (kitsmsan stats)
'''),
        code(SETUP, "hide-input"),
        md('''
        ## One case on disk

        A KiTS19 case is a folder holding two gzipped NIfTI files, `imaging.nii.gz` (float CT in HU) and
        `segmentation.nii.gz` (uint8 labels 0 background, 1 kidney, 2 tumour).
        `kitsmsan.data.kits19.load_case` reads both and checks them.
        '''),
        code('''
        from kitsmsan.data.kits19 import LABEL_NAMES, kits_affine

        case_dir = DATA / split["train"][case_index]
        print("\\n".join(f"{p.relative_to(DATA)}  {p.stat().st_size / 1e3:.0f} kB" for p in sorted(case_dir.iterdir())))
        case = load_case(case_dir)
        print(f"\\nimage {case.image.shape} {case.image.dtype}, label {case.label.shape} {case.label.dtype}")
        print(f"labels present: {', '.join(LABEL_NAMES[v] for v in np.unique(case.label))}")
        print(f"spacing (z, y, x) = {tuple(round(s, 3) for s in case.spacing)} mm")
        '''),
        md('''
        ### Orientation: axis 0 is axial

        The arrays are `(Z, Y, X)` = (slices, rows, columns). The header's affine maps voxel indices to
        millimetres; in KiTS19 it has the form `[[0, 0, -px, 0], [0, -px, 0, 0], [-slice, 0, 0, 0], [0, 0, 0, 1]]`:
        the *first* array axis moves along the patient's long axis (inferiorly), rows move posteriorly
        and columns towards the patient's left (orientation "IPL"). This is why the slice thickness is
        the first spacing and why a network that reads "4 slices of 512 × 512" (§3.1) takes
        `image[z:z + 4]`. Our files carry the same affine, computed by `kits_affine`:
        '''),
        code('''
        print(np.round(case.affine, 3))
        print("same as kits_affine(spacing):", np.allclose(case.affine, kits_affine(case.spacing)))
        '''),
        code('''
        fig = viz.show_orthogonal(case.image, case.label, spacing=case.spacing)
        '''),
        md('''
        The coronal and sagittal planes are stretched by the ratio of slice thickness to pixel size:
        KiTS19 slices are typically about four times thicker than the in-plane pixels (3 mm vs
        0.78 mm median), which is one reason the paper's network reads a thin stack of 4 slices
        rather than a cube. The axial slices through the kidneys:
        '''),
        code('''
        fig = viz.show_slices(case.image, case.label, num_slices=5, title=f"{case.case_id}: axial slices ({DATA_KIND})")
        '''),
        md('''
        ## Spacing, slices and volumes, per case

        `kitsmsan.data.stats.dataset_statistics` computes, per case: the number of slices, the slice
        thickness and in-plane spacing, kidney and tumour volumes in millilitres, the number of connected
        kidney and tumour components, and the fraction of slices that contain kidney — the quantity that
        decides how often a randomly placed 4-slice window sees any kidney at all, and therefore why the
        training sampler oversamples foreground windows.
        '''),
        code('''
        from kitsmsan.data.stats import dataset_statistics, hu_histograms, read_table, summarize_statistics

        ours = dataset_statistics(DATA, case_ids=split["train"] + split["test"])
        ours[["case_id", "slices", "slice_thickness_mm", "pixel_spacing_mm", "kidney_ml", "tumor_ml",
              "kidney_components", "tumor_components", "kidney_slice_fraction"]].round(2)
        '''),
        md('''
        ## Hounsfield units per label, and the window [-200, 500]

        CT intensities are in Hounsfield units: air -1000, fat about -100, water 0, soft tissue 20–80,
        contrast-enhanced kidney cortex 150–250, bone up to 1000 and more. The paper clips every volume to
        [-200, 500] HU because, in its words, most kidneys and tumours lie in that range (§2.1): the
        window keeps all the contrast between kidney, tumour and their neighbours and throws away the
        air/bone extremes that would otherwise dominate a linear intensity scale. The histograms below
        (per label, each normalised to unit area) show how much of each label the window keeps.
        '''),
        code('''
        cases_for_hist = [load_case(DATA / cid) for cid in split["train"][:8]]
        hist = hu_histograms(cases_for_hist, bins=100)
        fig = viz.plot_hu_histograms(hist, title=f"HU per label, {len(cases_for_hist)} training cases ({DATA_KIND})")
        '''),
        md('''
        Clipping and scaling are one function, `kitsmsan.data.preprocess.normalize`, which training and
        inference both call — so they can never disagree about the window:
        '''),
        code('''
        from kitsmsan.data.preprocess import HU_WINDOW, normalize

        viz.show_source(normalize)
        '''),
        code('''
        z = viz.pick_slices(case.label, 1)[0]
        fig = viz.plot_maps({"raw HU": case.image[z], f"normalize(image, {HU_WINDOW})": normalize(case.image[z])},
                            cmap="gray", ncols=2, size=3.2, title=f"{case.case_id}, slice {z}")
        '''),
        md('''
        ## What the network is shown: 4-slice windows

        Training reads random windows of 4 consecutive axial slices (§3.1) from a preprocessed cache
        (`kitsmsan prepare`): the clipped volumes stored as memory-mapped arrays with the list of slices
        that hold kidney or tumour. `SliceWindowDataset` centres a share of the windows on kidney and
        tumour slices (`fg_fraction`, `tumor_fraction`); without that, most windows of a long scan would
        show no kidney at all (compare the kidney slice fraction above).
        '''),
        code('''
        from kitsmsan.data.dataset import SliceWindowDataset

        ds = SliceWindowDataset(CACHE, split["train"], num_slices=4, length=64, seed=seed)
        image_w, label_w = ds[0]
        print(f"one window: image {tuple(image_w.shape)} {image_w.dtype}, label {tuple(label_w.shape)} {label_w.dtype}")
        share = np.mean([bool((ds[i][1] > 0).any()) for i in range(len(ds))])
        print(f"{100 * share:.0f}% of {len(ds)} sampled windows contain kidney")
        fig = viz.plot_maps({f"slice {k}": image_w[0, k].numpy() for k in range(4)}, cmap="gray", colorbar=False,
                            title="the 4 normalised slices of one training window")
        '''),
        md('''
        ## The phantoms beside the real KiTS19 labels

        The official KiTS19 segmentations are public and small (about 65 MB for the 210 labelled cases), so
        their statistics can be computed on a laptop: `kitsmsan download --labels-only` fetches them and
        `kitsmsan stats` writes `book/data/kits19_label_stats.csv`. When that table is present, the
        distributions below put our data and the real labels side by side, so you can see how far the
        phantoms are from reality (the real table is derived from the KiTS19 segmentations,
        CC BY-NC-SA 4.0).
        '''),
        code('''
        real_path = ROOT / label_stats_csv
        real = read_table(real_path) if real_path.is_file() else None
        columns = ["slices", "slice_thickness_mm", "kidney_ml", "tumor_ml", "kidney_components_1ml",
                   "tumor_components", "kidney_slice_fraction", "tumor_slice_fraction"]
        if real is None:
            display(Markdown(f"*`{label_stats_csv}` is not there yet: run `kitsmsan download --labels-only` and "
                             "`kitsmsan stats` to add the real KiTS19 statistics to this comparison.*"))
        fig = viz.plot_distributions({"KiTS19 labels": real, DATA_KIND: ours}, columns,
                                     title="per-case statistics: real KiTS19 labels vs the data of this book")
        medians = pd.DataFrame({DATA_KIND: summarize_statistics(ours),
                                **({"KiTS19 labels": summarize_statistics(real)} if real is not None else {})})
        medians.round(3)
        '''),
        md('''
        ## Summary

        * KiTS19 volumes are `(Z, Y, X)` arrays with axis 0 axial (affine orientation IPL); slices are
          thick compared with the pixels, so the paper's network reads thin 4-slice stacks.
        * The paper clips to [-200, 500] HU (§2.1); the histograms show that this keeps essentially all
          kidney and tumour voxels and discards air and bone.
        * Kidneys occupy a minority of slices, so windows are sampled around them on purpose.
        * The phantoms follow the KiTS19 conventions exactly; their statistics sit beside the real labels
          when those are available.

        **Exercises.** (1) Change `case_index` and find a case where one kidney is missing or split into
        two components. (2) Which window would you choose if you only had to separate tumour from kidney?
        Look at where the two histograms overlap. (3) With the real label table, compare the median slice
        thickness with the phantoms' and predict how it affects a 4-slice window's coverage in mm.
        '''),
    ])


# ------------------------------------------------------------------------------------------------
# 02 model tour
# ------------------------------------------------------------------------------------------------


def nb02():
    return notebook([
        md('''
        # The networks: 3D U-Net, MSAN-V1, MSAN-V2 and deep supervision

        The paper compares and then ensembles five networks (MSAN paper, §2.2 and §3.1): a 3D U-Net; MSAN-V1,
        which adds a *multi-scale attention* layer to the skip connections (Fig. 1); MSAN-V2, which adds a
        3D Res2Net block beside the bottleneck (Fig. 2–3); and both MSANs with *deep supervision*. In
        `kitsmsan` they are one network, `kitsmsan.models.MSAN`, with three switches and a registry of the
        five names. This chapter builds all five, follows a tensor through the network at the paper's input
        size of 4 × 512 × 512, counts parameters and FLOPs, and then opens the two new ingredients: the
        attention layer (with its weights drawn on a phantom) and the Res2Net block (with its receptive
        fields).
        '''),
        params(DATA_PARAMS + '''
runs_dir = "runs/notebooks"  # a trained msan_v1 here is used for the attention maps (else an untrained one)
paper_depth = 4            # the paper's window: 4 slices ...
paper_size = 512           # ... of 512 x 512 (shapes and FLOPs are computed on the meta device: free)
demo_channels = 8          # width of the small networks run on real tensors below
'''),
        code(SETUP, "hide-input"),
        md('''
        ## Five variants, one class

        Each registered name is a set of switches on `ModelConfig`:
        '''),
        code('''
        from kitsmsan.models import MODEL_REGISTRY, MSAN, ModelConfig, build_model, list_models

        pd.DataFrame([{"name": name, "paper's name": spec.title, "what it adds": spec.description,
                       **{k: spec.switches.get(k, False) for k in ("attention", "res2net", "deep_supervision")}}
                      for name, spec in MODEL_REGISTRY.items()]).set_index("name")
        '''),
        md('''
        The forward pass is written out level by level — `x0 … x4` down the encoder, `u3 … u0` up the
        decoder — so the U is visible in the code. The three switches appear as the Res2Net branch at the
        bottom, `_skip` (attention or plain skip) on every level, and the two auxiliary heads:
        '''),
        code('''
        viz.show_source(MSAN.forward)
        '''),
        md('''
        ## Shapes through the network at 4 × 512 × 512

        Tensors on PyTorch's `meta` device have shapes but no data, so the full-size network can be traced
        for free. Forward hooks record the output shape of every stage of MSAN-V2 with deep supervision
        (the largest variant) in training mode, where the auxiliary heads are active. The 4 slices are never
        pooled (pooling windows `(1, 2, 2)`, a decision documented in the decisions chapter), so D stays 4
        while H and W halve four times, 512 → 32.
        '''),
        code('''
        with torch.device("meta"):
            big = build_model("msan_v2_ds")
        stages = ["enc0", "enc1", "enc2", "enc3", "enc4", "res2net", "up3", "att3", "dec3", "up2", "att2", "dec2",
                  "up1", "att1", "dec1", "up0", "att0", "dec0", "head", "aux_head_u3", "aux_head_u2"]
        shapes = {}
        hooks = [getattr(big, name).register_forward_hook(
                     lambda module, inputs, output, name=name: shapes.__setitem__(name, tuple(output.shape)))
                 for name in stages]
        big.train()
        outputs = big(torch.empty(1, 1, paper_depth, paper_size, paper_size, device="meta"))
        for hook in hooks:
            hook.remove()
        print("training-mode outputs:", [tuple(o.shape) for o in outputs])
        pd.DataFrame([{"stage": name, "output (B, C, D, H, W)": str(shapes[name])} for name in stages]).set_index("stage")
        '''),
        md('''
        ## Parameters and FLOPs

        `kitsmsan.models.model_report` builds each variant on the meta device and counts its parameters and
        the FLOPs of one forward pass of a single 4 × 512 × 512 window (2 × multiply-accumulates, with
        PyTorch's FLOP counter). Attention is nearly free in parameters (four 1 × 1 × 1 convolutions); the
        Res2Net branch adds about 8%.
        '''),
        code('''
        from kitsmsan.models import model_report

        report = model_report(input_shape=(1, 1, paper_depth, paper_size, paper_size))
        pd.DataFrame([{"variant": r["name"], "parameters (M)": r["parameters"] / 1e6, "GFLOPs / window": r["gflops"],
                       "eval output": str(r["eval_output_shapes"][0][1:]),
                       "train outputs": " + ".join(str(tuple(s[1:])) for s in r["train_output_shapes"])}
                      for r in report]).set_index("variant").round(2)
        '''),
        md('''
        ## The multi-scale attention layer, step by step

        The paper describes the layer in one sentence (§2.2, Fig. 1): larger feature maps are added
        element-wise to smaller ones, a sigmoid turns the sum into weights, and the features are multiplied
        by those weights before being concatenated into the deeper layers. The figure leaves open how maps of
        different sizes and widths are added; `MultiScaleAttention` projects the coarse map to the fine map's
        channels with a 1 × 1 × 1 convolution and interpolates it to the fine map's size:
        '''),
        code('''
        from kitsmsan.models import MultiScaleAttention

        viz.show_source(MultiScaleAttention.forward)
        '''),
        md('''
        To watch it work, we take a network — the trained MSAN-V1 of the training chapter if it exists,
        otherwise a freshly initialised one (then the weights only show the input's structure) — and one
        4-slice window through a kidney of a test case. A forward pre-hook captures the two inputs of the
        finest attention layer (`att0`): the encoder's skip features `x` and the decoder's coarser features
        `g`. We then call the layer's own pieces in order.
        '''),
        code('''
        from kitsmsan.data.preprocess import normalize
        from kitsmsan.inference import load_model
        from kitsmsan.train.loop import run_state

        trained = ROOT / runs_dir / "msan_v1"
        if run_state(trained) == "done":
            net = load_model(trained, checkpoint="last")
            net_note = f"trained MSAN-V1 ({os.path.relpath(trained, ROOT)}, {json.loads((trained / 'summary.json').read_text())['iterations']} iterations)"
        else:
            net = build_model("msan_v1", base_channels=demo_channels).eval()
            net_note = "untrained MSAN-V1 (no finished run in runs_dir/msan_v1: run the training notebook first)"
        print("network:", net_note)
        test_case = load_case(DATA / split["test"][0])
        z_mid = viz.pick_slices(test_case.label, 1)[0]
        z0 = int(np.clip(z_mid - 1, 0, test_case.image.shape[0] - 4))
        window = torch.from_numpy(normalize(test_case.image[z0:z0 + 4]))[None, None]      # (1, 1, 4, H, W)
        captured = {}
        hook = net.att0.register_forward_pre_hook(lambda module, args: captured.update(x=args[0], g=args[1]))
        with torch.no_grad():
            logits = net(window)
        hook.remove()
        x, g = captured["x"], captured["g"]
        att = net.att0
        with torch.no_grad():
            g_projected = att.project(g)
            att.record = True
            enhanced = att(x, g)
            att.record = False
        weights = att.last_weights
        print(f"x (fine skip features)      {tuple(x.shape)}")
        print(f"g (coarse decoder features) {tuple(g.shape)}")
        print(f"project(g), 1x1x1 conv      {tuple(g_projected.shape)}  -> interpolated to {tuple(x.shape[2:])}")
        print(f"weights = sigmoid(x + g)    {tuple(weights.shape)}, range [{weights.min():.3f}, {weights.max():.3f}]")
        print(f"enhanced = x * weights      {tuple(enhanced.shape)};  equal to x * weights: {torch.allclose(enhanced, x * weights)}")
        '''),
        md('''
        The weights of all four attention layers of this window (`MSAN.attention_maps`), averaged over
        channels, on the middle slice of the window; level 0 is full resolution, level 3 is 1/8:
        '''),
        code('''
        maps = net.attention_maps(window)
        dz = z_mid - z0
        fig = viz.plot_maps({f"level {level}: {tuple(w.shape[-2:])}": w[0, :, dz].mean(0).numpy() for level, w in maps.items()},
                            vmin=0, vmax=1, cmap="magma", title=f"attention weights per level ({net_note})")
        fig = viz.plot_attention(test_case.image[z_mid], maps[0][0, :, dz].numpy(), label2d=test_case.label[z_mid],
                                 title=f"level-0 attention on {test_case.case_id}, slice {z_mid} ({DATA_KIND})")
        '''),
        md('''
        ## The 3D Res2Net block and its receptive fields

        MSAN-V2 adds a 3D Res2Net block (Gao et al.) parallel to the bottom branch, fed with the smallest
        feature maps (§2.2, Fig. 2–3). Inside, the channels are split into `s` groups; group `i` is convolved
        after adding the output of group `i - 1`, so each group sees one 3 × 3 × 3 step further than the
        previous one — several receptive fields inside one block:
        '''),
        code('''
        from kitsmsan.models import Res2NetBlock3d

        viz.show_source(Res2NetBlock3d.forward)
        '''),
        md('''
        The receptive field can be measured rather than argued: the gradient of one output voxel of each
        group with respect to the block's input is non-zero exactly on that voxel's receptive field. (A block
        with batch norm in eval mode is used here, because instance norm mixes every voxel of the volume
        through its mean and variance.)
        '''),
        code('''
        block = Res2NetBlock3d(8, 8, scale=4, norm="batch").eval()
        size = 11
        group_out = {}     # y_1 is the first group of the 1x1x1 reduction; y_2..y_4 come out of the 3x3x3 convs
        hooks = [block.reduce.register_forward_hook(lambda m, a, o: group_out.__setitem__(1, o[:, :block.width]))]
        hooks += [conv.register_forward_hook(lambda m, a, o, i=i: group_out.__setitem__(i, o))
                  for i, conv in enumerate(block.convs, start=2)]
        fields = {}
        for group in range(1, block.scale + 1):
            inp = torch.randn(1, 8, size, size, size, requires_grad=True)
            block(inp)
            group_out[group][0, 0, size // 2, size // 2, size // 2].backward()
            grad = inp.grad.abs().sum(dim=(0, 1))[size // 2]                  # (H, W) on the central slice
            extent = int((grad.sum(dim=1) > 0).sum())
            fields[f"y{group}: {extent} x {extent} x {extent} voxels"] = (grad > 0).float().numpy()
        for hook in hooks:
            hook.remove()
        print("receptive fields:", "; ".join(fields))
        fig = viz.plot_maps(fields, cmap="viridis", colorbar=False, vmin=0, vmax=1,
                            title="receptive field of one output voxel of each Res2Net group (central slice, yellow)")
        '''),
        md('''
        ## Deep supervision: two more heads

        The `_ds` variants add 1 × 1 × 1 heads on the decoder stages that undo the encoder's last two
        poolings (§2.2: "in the last two max pooling of the encoding part"), giving outputs at 1/4 and 1/8
        of the in-plane size. In training mode the network returns all three; the loss compares each with
        the labels brought to its size and sums them with weights that halve per level (nnU-Net's
        choice; the paper gives none):
        '''),
        code('''
        from kitsmsan.losses import DeepSupervisionLoss, DiceLoss, deep_supervision_weights

        ds_net = build_model("msan_v1_ds", base_channels=demo_channels).train()
        label_window = torch.from_numpy(test_case.label[z0:z0 + 4].astype(np.int64))[None]      # (1, 4, H, W)
        outs = ds_net(window)
        loss_fn = DeepSupervisionLoss(DiceLoss())
        print("outputs:", [tuple(o.shape) for o in outs])
        print("weights:", [round(w, 4) for w in deep_supervision_weights(len(outs))])
        print(f"loss of an untrained network: {loss_fn(outs, label_window).item():.4f}")
        fig = viz.plot_maps({f"target at {tuple(o.shape[-2:])}": loss_fn.resize_target(label_window, o.shape[2:], 3)[0, dz].numpy()
                             for o in outs}, cmap="viridis", vmin=0, vmax=2, ncols=3, colorbar=False,
                            title="the label each head is trained against (nearest-neighbour downsampling)")
        '''),
        code('''
        viz.show_source(DeepSupervisionLoss.forward)
        '''),
        md('''
        ## Summary

        * Five networks, one class: `build_model(name)` flips attention, Res2Net and deep supervision.
        * At 4 × 512 × 512 every variant costs about 1.1 TFLOPs per window and 22–24 M parameters at the
          default width; attention adds under 1% of parameters, Res2Net about 8%.
        * The attention layer recalibrates each skip connection with weights in (0, 1) computed from the
          skip features plus the upsampled coarser features.
        * Res2Net groups see receptive fields of 1, 3, 5 and 7 voxels inside one block.

        **Exercises.** (1) Build `msan_v2` with `res2net_scale=8` and compare parameters. (2) Trace the
        shapes with `pool_depth=2`: where does D shrink, and what input depth does `check_input` then
        require? (3) Compare the level-0 attention maps of an untrained and a trained MSAN-V1.
        '''),
    ])


# ------------------------------------------------------------------------------------------------
# 03 training
# ------------------------------------------------------------------------------------------------


def nb03():
    return notebook([
        md('''
        # Training one network

        The paper's recipe (MSAN paper, §3.1): windows of 4 axial slices of 512 × 512, batch size 2, Dice
        loss, Adam with learning rate 0.001 divided by 10 every 100,000 iterations, 400,000 iterations, deep
        supervision for the `_ds` variants. That is days of GPU time per network. The book runs the same
        loop with the `smoke` preset — small phantoms, a narrow network, a few hundred iterations — which is
        enough to watch the loss fall and the kidney appear on a CPU. This page is executed once per
        variant; set `variant` to train another, and `smoke=False` on a GPU for the paper's settings.
        '''),
        params(DATA_PARAMS + '''
variant = "msan_v1"        # unet3d, msan_v1, msan_v1_ds, msan_v2 or msan_v2_ds
runs_dir = "runs/notebooks"  # the run folder is <runs_dir>/<variant> (the book: runs/book)
num_iters = 40             # 0: as the preset (smoke 300, paper 400,000); the default here is a quick look
eval_every = 0             # validation Dice every N iterations (0: as the preset, only at the end)
device = ""                # empty: as the preset (smoke cpu, paper auto); or cpu, cuda, auto
bench_glob = "book/data/bench_*.json"   # benchmark results (kitsmsan bench) quoted for the expected speed
'''),
        code(SETUP, "hide-input"),
        md('''
        ## The configuration

        `TrainConfig` is the only thing the training loop reads; it is saved as `config.json` in the run
        folder and inside every checkpoint. The table compares this run with the paper's recipe.
        '''),
        code('''
        from kitsmsan.models import describe
        from kitsmsan.train import TrainConfig, train
        from kitsmsan.train.loop import run_state

        RUN = ROOT / runs_dir / variant
        overrides = dict(variant=variant, data_root=str(DATA), cache_dir=str(CACHE), run_dir=str(RUN),
                         train_cases=train_cases or data["train"], test_cases=test_cases or data["test"], seed=seed)
        overrides.update({k: v for k, v in (("num_iters", num_iters), ("eval_every", eval_every), ("device", device)) if v})
        config = TrainConfig.from_preset("smoke" if smoke else "paper", **overrides)
        paper = TrainConfig.from_preset("paper", variant=variant)
        keys = ["num_slices", "crop_size", "batch_size", "loss", "lr", "lr_step", "lr_gamma", "num_iters",
                "use_deep_supervision", "model", "amp", "channels_last", "eval_every", "device", "train_cases", "test_cases"]
        display(Markdown(f"**{describe(variant)}** — run folder `{os.path.relpath(RUN, ROOT)}`"))
        pd.DataFrame({"paper (§3.1)": {k: str(getattr(paper, k)) for k in keys},
                      "this run": {k: str(getattr(config, k)) for k in keys}})
        '''),
        md('''
        ## What speed to expect

        `kitsmsan bench` measures training steps per second per variant on the device it runs on and writes
        JSON under `book/data/`; the step rows found there for this variant are quoted here, each with its
        device and input size (a CPU row is measured at a reduced size, so its hours are not the paper's).
        The Performance chapter has every column, and the arithmetic the paper's schedule asks of a GPU.
        '''),
        code('''
        import glob

        bench_rows = []
        for path in sorted(glob.glob(str(ROOT / bench_glob))):
            result = json.loads(Path(path).read_text())
            sections = result.get("results", result) if isinstance(result, dict) else {"rows": result}
            for rows in (sections.values() if isinstance(sections, dict) else [sections]):
                for row in rows if isinstance(rows, list) else []:
                    if isinstance(row, dict) and row.get("variant") == variant and row.get("benchmark", "step") == "step":
                        bench_rows.append({"file": Path(path).name, **row})
        if bench_rows:
            shown = ["file", "device", "input", "base_channels", "mode", "it_per_s", "speedup_vs_fp32",
                     "peak_mem_mb", "hours_per_run", "error"]
            table = pd.DataFrame(bench_rows)
            display(table[[c for c in shown if c in table.columns]])
        else:
            display(Markdown(f"*No benchmark row for `{variant}` yet — pending: `kitsmsan bench step` measures it on "
                             "the device it runs on and writes the JSON this cell reads. The speed of this very run is "
                             "measured below, after training.*"))
        '''),
        md('''
        ## Train — or continue

        Training writes `metrics.jsonl`, `checkpoints/last.pt` every `ckpt_every` iterations, and
        `summary.json` when it finishes. Running this cell again does not start over: a finished run is left
        alone, and an interrupted one (a Colab disconnect, a killed job) continues from `last.pt` with the
        same sample stream, so the final weights equal those of an uninterrupted run. Raise `num_iters` to
        train further.
        '''),
        code('''
        state = run_state(RUN)
        done_iters = json.loads((RUN / "summary.json").read_text())["iterations"] if state == "done" else 0
        if state == "done" and done_iters >= config.num_iters:
            print(f"{os.path.relpath(RUN, ROOT)}: already trained for {done_iters} iterations; nothing to do "
                  "(raise num_iters to continue, or delete the folder to start again)")
        else:
            print(f"{os.path.relpath(RUN, ROOT)}: {state} run -> training to {config.num_iters} iterations")
            train(config, resume=True)
        summary = json.loads((RUN / "summary.json").read_text())
        env = json.loads((RUN / "env.json").read_text())
        '''),
        md('''
        ## Loss and validation Dice

        The training loss is the Dice loss (1 − mean Dice over the classes, §3.1), logged every `log_every`
        iterations; the validation rows give the kidney, tumour and composite Dice of the first test cases
        (no post-processing). The checkpoint used later is `last.pt`: the test cases never choose a checkpoint.
        '''),
        code('''
        fig = viz.plot_training_curves(RUN, title=f"{variant} on {DATA_KIND}")
        '''),
        code('''
        rows = viz.read_metrics(RUN)
        speeds = [r["it_per_s"] for r in rows if "it_per_s" in r]
        rate = float(np.median(speeds)) if speeds else summary["iterations"] / max(summary["seconds"], 1e-9)
        paper_hours = 400_000 / rate / 3600
        pd.Series({"iterations": summary["iterations"], "wall time (s)": summary["seconds"],
                   "iterations / s (median)": round(rate, 2), "device": env.get("device"),
                   "torch": env.get("torch"), "commit": env.get("commit"),
                   "final validation Dice": ", ".join(f"{k} {v:.3f}" for k, v in (summary.get("final_val") or {}).items()),
                   "400,000 iterations at this speed and size (h)": round(paper_hours, 1)}, name=variant).to_frame()
        '''),
        md('''
        The last row is *not* a projection of the paper's training: it is the paper's iteration count at this
        run's window size and width. At 4 × 512 × 512 and full width a step costs far more; the performance
        chapter has the measured numbers per device.

        ## The trained network on a test case
        '''),
        code('''
        from kitsmsan.inference import load_model, predict_case
        from kitsmsan.metrics import kits_dice

        model = load_model(RUN, checkpoint="last")
        test_case = load_case(DATA / split["test"][0])
        pred = predict_case(model, test_case.image, num_slices=config.num_slices)
        scores = kits_dice(pred, test_case.label)
        print(f"{test_case.case_id}: " + ", ".join(f"{k} Dice {v:.3f}" for k, v in scores.items()))
        fig = viz.show_slices(test_case.image, test_case.label, {variant: pred}, num_slices=4,
                              title=f"{variant} after {summary['iterations']} iterations ({DATA_KIND})")
        '''),
        md('''
        ## Summary

        * One loop trains all five networks; a run folder is self-describing (config, environment,
          metrics, checkpoints, summary).
        * Re-running never repeats finished work and continues interrupted work exactly.
        * The CPU smoke run learns the kidney in a few hundred iterations on phantoms; the tumour, smaller
          and closer in intensity to the kidney, takes longer — as in the paper (§3.2).

        **Exercises.** (1) Double `num_iters` and re-run: the run continues from its checkpoint. (2) Train
        `msan_v1_ds` and compare its loss curve with `msan_v1`'s: the logged loss includes the auxiliary
        heads. (3) Set `eval_every` to 50 and watch the validation Dice during training.
        '''),
    ])


# ------------------------------------------------------------------------------------------------
# 04 evaluation
# ------------------------------------------------------------------------------------------------


def nb04():
    return notebook([
        md('''
        # Evaluation and the ensemble: our Table 1

        The paper reports Dice on its ten test cases for four single networks and the five-network ensemble
        (MSAN paper, §3.2, Table 1), after keeping "a simple maximal connected component" of every
        prediction. This chapter runs the same steps on the trained runs: predict the test split with each
        network, keep the largest connected component, vote, score with the KiTS19 Dice (kidney = kidney +
        tumour, tumour alone), and set our numbers beside the paper's with their provenance. The results are
        also written to files (`per_case.csv`, `summary.*`, `table1.md`) next to the runs.
        '''),
        params(DATA_PARAMS + RUN_PARAMS + '''
results_dir = ""           # empty: <runs_dir>/evaluation
num_worst = 2              # how many of the worst test cases to show
'''),
        code(SETUP, "hide-input"),
        md('''
        ## The trained networks

        This page reads the run folders; it never retrains them (the book sets `train_missing=False`, so a
        missing run is an error that says how to make it).
        '''),
        code(RUNS_CELL, "hide-input"),
        md('''
        ## Predictions on the test split

        `predict_case` slides 4-slice windows along z (stride 2) and averages the softmax of overlapping
        windows; the five predictions are combined by a per-voxel majority vote (ties go to the higher
        label, tumour > kidney > background), and every prediction, the vote included, is post-processed.
        '''),
        code('''
        from kitsmsan.ensemble import majority_vote
        from kitsmsan.inference import predict_case
        from kitsmsan.postprocess import keep_largest_components

        test_set = {cid: load_case(DATA / cid) for cid in split["test"]}
        raw = {v: {cid: predict_case(m, c.image, num_slices=runs[v]["config"]["num_slices"])
                   for cid, c in test_set.items()} for v, m in models.items()}
        # the ensemble: majority vote of the five raw predictions, then post-processed like every network
        # (the same order as kitsmsan reproduce)
        raw["ensemble"] = {cid: majority_vote([raw[v][cid] for v in VARIANTS]) for cid in test_set}
        post = {key: {cid: keep_largest_components(p, num_components=1) for cid, p in preds.items()} for key, preds in raw.items()}
        post2 = {key: {cid: keep_largest_components(p, num_components=2) for cid, p in preds.items()} for key, preds in raw.items()}
        print(f"{len(VARIANTS)} networks x {len(test_set)} test cases predicted")
        '''),
        md('''
        Every prediction is post-processed by keeping its largest connected components. The paper keeps
        "the maximal connected component" (§3.1); taken literally (k = 1) that deletes one of two kidneys
        whole, and on the real KiTS19 labels it would cap even a perfect prediction at a kidney Dice of about
        73 %, below every kidney number of the paper's own Table 1. So the headline columns keep one
        component per kidney (k = 2), with the literal k = 1 and no post-processing beside them (see the
        decisions page and the ablations). The step, as the package implements it:
        '''),
        code('''
        viz.show_source(keep_largest_components)
        '''),
        md('''
        ## Table 1
        '''),
        code('''
        from kitsmsan.metrics import dice_table, kits_dice, summarize, write_results
        from kitsmsan.reproduce import POSTPROCESS_K, table1, table1_scores
        from kitsmsan.utils.io import atomic_write_text
        from kitsmsan.utils.provenance import environment

        rows = [{"model": key, "postprocess": k, "case_id": cid, **kits_dice(preds[cid], test_set[cid].label)}
                for k, table in ((0, raw), (1, post), (2, post2)) for key, preds in table.items() for cid in preds]
        per_case = dice_table(rows)
        summary = summarize(per_case[per_case["postprocess"] == POSTPROCESS_K], by="model")
        per_model = table1_scores(per_case, headline_k=POSTPROCESS_K)  # the same step as kitsmsan reproduce
        iterations = {v: r["summary"]["iterations"] for v, r in runs.items()}
        table_md, table_rows = table1(per_model, data_kind=DATA_KIND, iterations=iterations,
                                      preset="smoke" if smoke else "paper", headline_k=POSTPROCESS_K)
        env = environment(device if device != "auto" else None)
        provenance = {
            "data": DATA_KIND, "data folder": os.path.relpath(DATA, ROOT), "test cases": ", ".join(test_set),
            "training iterations": ", ".join(f"{v} {n}" for v, n in iterations.items()),
            "trained on": "; ".join(sorted({r["env"].get("device", "?") for r in runs.values()})),
            "trained at commit": ", ".join(sorted({r["env"].get("commit", "?") for r in runs.values()})),
            "evaluated on": env["device"], "evaluated at commit": env["commit"], "torch": env["torch"],
            "post-processing": f"largest connected components of the kidney region (k = {POSTPROCESS_K}; k = 1 and none beside it)",
            "ensemble": f"majority vote of the five raw predictions (ties to the higher label), then k = {POSTPROCESS_K}",
            "checkpoint": "last",
        }
        RESULTS = ROOT / results_dir if results_dir else RUNS / "evaluation"
        paths = write_results(RESULTS, per_case, summary, provenance=provenance,
                              title=f"Dice on the test cases ({DATA_KIND})")
        atomic_write_text(RESULTS / "table1.md",
                          table_md + "\\n" + "\\n".join(f"- {k}: {v}" for k, v in provenance.items()) + "\\n")
        display(Markdown(table_md))
        display(Markdown("**Provenance**\\n\\n" + "\\n".join(f"- {k}: {v}" for k, v in provenance.items())))
        print("written:", ", ".join(os.path.relpath(p, ROOT) for p in [*paths.values(), RESULTS / "table1.md"]))
        '''),
        md('''
        Read the two halves of the table separately. The paper's columns are KiTS19 numbers after 400,000
        iterations per network; ours are computed on the data named above after a few hundred CPU
        iterations, and are only comparable with each other. What *can* be compared is the shape of the
        result: does attention help over the plain U-Net, does the vote beat its members, and what does the
        post-processing do?

        ## Post-processing, per model
        '''),
        code('''
        both = summarize(per_case, by=["model", "postprocess"])[["kidney", "tumor", "averaged", "n_cases"]]
        both.round(3)
        '''),
        md('''
        ## Dice per case

        Each dot is one test case, joined across models by a grey line, so a hard case can be followed from
        network to network; the black bar is the mean.
        '''),
        code('''
        fig = viz.plot_dice_per_case(per_case[per_case["postprocess"] == POSTPROCESS_K], group="model",
                                     title=f"per-case Dice after post-processing, k = {POSTPROCESS_K} ({DATA_KIND})")
        '''),
        md('''
        ## The worst cases

        The test cases where the ensemble's composite Dice is lowest, with every network's prediction
        (filled) over the ground truth (outlined):
        '''),
        code('''
        ens = per_case[(per_case["model"] == "ensemble") & (per_case["postprocess"] == POSTPROCESS_K)]
        worst = ens.sort_values("composite", na_position="last")["case_id"].tolist()[:num_worst]
        for cid in worst:
            c = test_set[cid]
            score = ens.set_index("case_id").loc[cid]
            fig = viz.show_slices(c.image, c.label, {key: post2[key][cid] for key in [*VARIANTS, "ensemble"]},
                                  num_slices=4, size=1.8,
                                  title=f"{cid}: ensemble kidney {score['kidney']:.3f}, tumour {score['tumor']:.3f} ({DATA_KIND})")
        '''),
        md('''
        ## Summary

        * The pipeline of Table 1 — predict, vote, keep the largest components, score — runs on any data
          folder in KiTS19 layout and writes its numbers to files with their provenance.
        * On phantoms and short CPU training the numbers are far below the paper's and say nothing about
          KiTS19; the comparison between rows is the informative part.

        **Exercises.** (1) Evaluate with `tie_break="lowest"` in `majority_vote`: how many voxels change?
        (2) Remove one network from `variants` and re-run: does the four-model vote still beat every member?
        '''),
    ])


# ------------------------------------------------------------------------------------------------
# 05 ablations
# ------------------------------------------------------------------------------------------------


def nb05():
    return notebook([
        md('''
        # Ablations the paper did not run

        The paper changes several things at once and reports one table. Here each choice is varied alone, on
        the phantoms, with small budgets — a CPU runs this page in a couple of minutes. Every section asks a
        question, answers it with a figure, and states the answer in one sentence computed from the numbers.
        These are phantom results from short trainings: they show *how* to ask the question and what the
        mechanism does, not what KiTS19 would say.

        The first two ablations reuse the five trained runs; the others train small extra runs under
        `<runs_dir>/ablations/`, each once (re-rendering the page reuses them).
        '''),
        params(DATA_PARAMS + RUN_PARAMS + '''
ablation_iters = 10        # iterations of every extra training run (the book: 120)
depths = "1,4,8"           # input depths (slices per window) to compare; empty skips the ablation
ds_weights_alt = "0.3333,0.3333,0.3334"   # the alternative deep-supervision weights (full, aux 1/4, aux 1/8)
windows = "-200:500,-1000:1000,-100:300,0:250"   # HU windows compared (the paper's first)
'''),
        code(SETUP, "hide-input"),
        code(RUNS_CELL, "hide-input"),
        code('''
        from kitsmsan.ensemble import argmax_label, average_probabilities, majority_vote
        from kitsmsan.inference import predict_case
        from kitsmsan.metrics import dice_table, kits_dice, summarize
        from kitsmsan.postprocess import keep_largest_components

        test_set = {cid: load_case(DATA / cid) for cid in split["test"]}
        probs = {v: {cid: predict_case(m, c.image, num_slices=runs[v]["config"]["num_slices"], return_probs=True)
                     for cid, c in test_set.items()} for v, m in models.items()}
        labels = {v: {cid: argmax_label(p) for cid, p in ps.items()} for v, ps in probs.items()}
        ABL = RUNS / "ablations"
        results = {}

        def mean_scores(preds):
            """Mean kidney/tumour Dice of {case_id: label map} over the test cases."""
            s = summarize(dice_table([{"case_id": cid, **kits_dice(p, test_set[cid].label)} for cid, p in preds.items()]))
            return {"kidney": float(s["kidney"].iloc[0]), "tumor": float(s["tumor"].iloc[0])}
        '''),
        md('''
        ## 1. Post-processing: keep 1, keep 2, or keep everything?

        The paper keeps the single largest connected component (§3.1). Most patients have two kidneys, so
        k = 1 removes one of them even from a perfect prediction. Below: the Dice of the five networks
        (averaged) and of the ensemble with no post-processing, k = 1 and k = 2, and the *ceiling* — the Dice
        of the ground truth itself after the same step.
        '''),
        code('''
        post_k = {"none": None, "k=1": 1, "k=2": 2}
        def pp(label, k):
            return label if k is None else keep_largest_components(label, num_components=k)
        pp_results = {}
        for name, k in post_k.items():
            per_net = [mean_scores({cid: pp(labels[v][cid], k) for cid in test_set}) for v in VARIANTS]
            vote = mean_scores({cid: pp(majority_vote([labels[v][cid] for v in VARIANTS]), k) for cid in test_set})
            ceiling = mean_scores({cid: pp(c.label, k) for cid, c in test_set.items()})
            pp_results[name] = {"networks, kidney": np.mean([s["kidney"] for s in per_net]),
                                "networks, tumor": np.mean([s["tumor"] for s in per_net]),
                                "ensemble, kidney": vote["kidney"], "ensemble, tumor": vote["tumor"],
                                "ceiling, kidney": ceiling["kidney"]}
        results["postprocess"] = pp_results
        fig = viz.plot_grouped_bars(pp_results, title=f"connected-component post-processing ({DATA_KIND})")
        d1 = pp_results["k=1"]["ensemble, kidney"] - pp_results["none"]["ensemble, kidney"]
        d2 = pp_results["k=2"]["ensemble, kidney"] - pp_results["none"]["ensemble, kidney"]
        display(Markdown(
            f"**On these {DATA_KIND}, keeping one component changes the ensemble's kidney Dice by {d1:+.3f} and keeping two "
            f"by {d2:+.3f}; a perfect prediction would score {pp_results['k=1']['ceiling, kidney']:.3f} on kidney after k = 1 "
            f"and {pp_results['k=2']['ceiling, kidney']:.3f} after k = 2** — the ceiling that the paper's choice puts on itself "
            "whenever a case has two kidneys."))
        '''),
        md('''
        ## 2. Majority vote or probability averaging?

        The paper votes on the five label maps (§3.1). The common alternative averages the softmax
        probabilities and takes the argmax. Both are computed from the same five predictions:
        '''),
        code('''
        ens_results = {}
        for name, k in (("no post-processing", None), ("k=2", 2)):
            vote = mean_scores({cid: pp(majority_vote([labels[v][cid] for v in VARIANTS]), k) for cid in test_set})
            avg = mean_scores({cid: pp(argmax_label(average_probabilities([probs[v][cid] for v in VARIANTS])), k)
                               for cid in test_set})
            ens_results[f"vote, {name}"] = vote
            ens_results[f"average, {name}"] = avg
        results["ensemble"] = ens_results
        fig = viz.plot_grouped_bars(ens_results, title=f"ensemble rule ({DATA_KIND})")
        dv = ens_results["vote, k=2"]["tumor"] - ens_results["average, k=2"]["tumor"]
        dk = ens_results["vote, k=2"]["kidney"] - ens_results["average, k=2"]["kidney"]
        display(Markdown(f"**Voting minus averaging, after k = 2: kidney {dk:+.3f}, tumour {dv:+.3f} on these {DATA_KIND}.** "
                         "Averaging lets a confident network outvote two hesitant ones; voting counts every network once."))
        '''),
        md('''
        ## 3. Deep supervision on and off, and its weights

        The paper adds deep supervision to MSAN-V1 and MSAN-V2 without saying how the three losses are
        weighted; the package halves the weight per level (4/7, 2/7, 1/7). Three short runs from the same
        seed compare no deep supervision, those weights, and `ds_weights_alt`; the book's full runs of
        `msan_v1` and `msan_v1_ds` are shown beside them. Scores are without post-processing, to see the
        networks themselves.
        '''),
        code('''
        from kitsmsan.losses import deep_supervision_weights
        from kitsmsan.train.loop import run_state

        base = TrainConfig.from_preset("smoke", data_root=str(DATA), cache_dir=str(CACHE),
                                       train_cases=train_cases or data["train"], test_cases=test_cases or data["test"],
                                       num_iters=ablation_iters, seed=seed, device=device, progress=False, eval_cases=0)
        base = base.replace(model=dict(runs["msan_v1"]["config"]["model"]))   # the width of the book's runs

        def ablation_run(name, **changes):
            """Train <runs_dir>/ablations/<name> once (resumed if interrupted); return the model."""
            run = ABL / name
            if run_state(run) != "done":
                print(f"training {os.path.relpath(run, ROOT)} ({ablation_iters} iterations)")
                train(base.replace(run_dir=str(run), **changes), resume=True)
            return load_model(run, checkpoint="last"), json.loads((run / "config.json").read_text())

        def run_scores(model, num_slices=4):
            return mean_scores({cid: predict_case(model, c.image, num_slices=num_slices, stride=min(2, num_slices))
                                for cid, c in test_set.items()})

        alt = [float(w) for w in ds_weights_alt.split(",")]
        ds_results = {
            f"msan_v1, {ablation_iters} it": run_scores(ablation_run("msan_v1", variant="msan_v1")[0]),
            f"msan_v1_ds {[round(w, 2) for w in deep_supervision_weights(3)]}": run_scores(
                ablation_run("msan_v1_ds", variant="msan_v1_ds")[0]),
            f"msan_v1_ds {[round(w, 2) for w in alt]}": run_scores(
                ablation_run("msan_v1_ds_alt", variant="msan_v1_ds", ds_weights=alt)[0]),
        }
        for v in ("msan_v1", "msan_v1_ds"):
            if v in labels:
                ds_results[f"{v}, {runs[v]['summary']['iterations']} it (book run)"] = mean_scores(labels[v])
        results["deep_supervision"] = ds_results
        fig = viz.plot_grouped_bars(ds_results, title=f"deep supervision ({DATA_KIND}, no post-processing)")
        keys = list(ds_results)
        display(Markdown(f"**With the same {ablation_iters} iterations, deep supervision changes the kidney Dice by "
                         f"{ds_results[keys[1]]['kidney'] - ds_results[keys[0]]['kidney']:+.3f} (default weights) and "
                         f"{ds_results[keys[2]]['kidney'] - ds_results[keys[0]]['kidney']:+.3f} (alternative weights) on these "
                         f"{DATA_KIND}.** Short runs from one seed: differences of a few hundredths are within the noise "
                         "of a single run."))
        '''),
        md('''
        ## 4. Attention on and off at an equal parameter budget

        Does MSAN-V1 win because of attention, or because it has more parameters? The attention layers add
        only four 1 × 1 × 1 convolutions. We count the parameters of the book's `msan_v1` and find the width
        of a plain 3D U-Net closest to that budget; only if that width differs from the book's `unet3d` is an
        extra U-Net trained.
        '''),
        code('''
        from kitsmsan.models import build_model, count_parameters

        width = runs["msan_v1"]["config"]["model"].get("base_channels", 32)
        budget = count_parameters(build_model("msan_v1", base_channels=width))
        candidates = {b: count_parameters(build_model("unet3d", base_channels=b)) for b in range(max(1, width - 2), width + 3)}
        best = min(candidates, key=lambda b: abs(candidates[b] - budget))
        print(f"msan_v1 at width {width}: {budget:,} parameters")
        print("unet3d: " + ", ".join(f"width {b}: {n:,} ({100 * (n / budget - 1):+.1f}%)" for b, n in candidates.items()))
        att_results = {}
        iters = {v: runs[v]["summary"]["iterations"] for v in ("unet3d", "msan_v1")}
        if best == width:
            att_results[f"unet3d, width {width} ({100 * (candidates[width] / budget - 1):+.1f}% params), "
                        f"{iters['unet3d']} it"] = mean_scores(labels["unet3d"])
        else:
            wide, _ = ablation_run(f"unet3d_w{best}", variant="unet3d", model={**base.model, "base_channels": best},
                                   num_iters=iters["msan_v1"])
            att_results[f"unet3d, width {best} ({100 * (candidates[best] / budget - 1):+.1f}% params), "
                        f"{iters['msan_v1']} it"] = run_scores(wide)
        att_results[f"msan_v1, width {width}, {iters['msan_v1']} it"] = mean_scores(labels["msan_v1"])
        results["attention"] = att_results
        fig = viz.plot_grouped_bars(att_results, title=f"attention at (nearly) equal parameters ({DATA_KIND})")
        a, b = att_results.values()
        display(Markdown(f"**Attention costs {budget - candidates[width]:,} parameters "
                         f"({100 * (budget / candidates[width] - 1):.1f}%); at that budget MSAN-V1 minus U-Net is kidney "
                         f"{b['kidney'] - a['kidney']:+.3f}, tumour {b['tumor'] - a['tumor']:+.3f} on these {DATA_KIND}.**"))
        '''),
        md('''
        ## 5. The HU window

        The paper clips to [-200, 500] HU (§2.1). What a window does to the input can be measured without
        training: the share of kidney and tumour voxels it keeps unclipped, and how far apart kidney and
        tumour end up after scaling the window to [0, 1] (difference of the means in units of their pooled
        standard deviation — the contrast the network has to find). Training with another window needs the
        cache and the inference to agree on it, which the package fixes to the paper's window.
        '''),
        code('''
        from kitsmsan.data.preprocess import normalize

        train_cases_hu = [load_case(DATA / cid) for cid in split["train"][:6]]
        kidney_hu = np.concatenate([c.image[c.label == 1] for c in train_cases_hu])
        tumor_hu = np.concatenate([c.image[c.label == 2] for c in train_cases_hu])
        win_results, contrast = {}, {}
        for text in windows.split(","):
            low, high = (float(v) for v in text.split(":"))
            k, t = normalize(kidney_hu, (low, high)), normalize(tumor_hu, (low, high))
            pooled = np.sqrt((k.var() + t.var()) / 2) or 1.0
            name = f"[{low:g}, {high:g}]"
            win_results[name] = {"kidney kept": float(np.mean((kidney_hu >= low) & (kidney_hu <= high))),
                                 "tumor kept": float(np.mean((tumor_hu >= low) & (tumor_hu <= high)))}
            contrast[name] = {"kidney - tumour contrast": float(abs(k.mean() - t.mean()) / pooled)}
        results["hu_window"] = {n: {**win_results[n], **contrast[n]} for n in win_results}
        fig = viz.plot_grouped_bars(win_results, ylabel="share of voxels inside the window",
                                    title=f"what each HU window keeps ({DATA_KIND})")
        fig = viz.plot_grouped_bars(contrast, ylabel="|mean difference| / pooled std", ylim=None,
                                    title="kidney vs tumour contrast after scaling the window to [0, 1]")
        paper_w = next(iter(win_results))
        top = max(contrast, key=lambda n: contrast[n]["kidney - tumour contrast"])
        display(Markdown(
            f"**The paper's window {paper_w} keeps {100 * win_results[paper_w]['kidney kept']:.1f}% of kidney and "
            f"{100 * win_results[paper_w]['tumor kept']:.1f}% of tumour voxels of these {DATA_KIND}, with a kidney–tumour "
            f"contrast of {contrast[paper_w]['kidney - tumour contrast']:.2f}; the highest contrast, "
            f"{contrast[top]['kidney - tumour contrast']:.2f}, comes from {top}, which keeps only "
            f"{100 * win_results[top]['kidney kept']:.1f}% of the kidney voxels unclipped.** A linear scaling leaves this "
            "contrast unchanged, so a window changes it only by clipping — by flattening part of the kidney."))
        '''),
        md('''
        ## 6. Input depth: 1, 4 or 8 slices

        Why 4 slices (§3.1)? One slice is a 2D network in disguise; eight slices see more context along z at
        twice the cost. Short runs of MSAN-V1 from the same seed, the same iterations, different
        `num_slices`:
        '''),
        code('''
        depth_results = {}
        for d in [int(v) for v in depths.split(",") if v.strip()]:
            name = "msan_v1" if d == 4 else f"msan_v1_depth{d}"
            model, cfg = ablation_run(name, variant="msan_v1", num_slices=d)
            depth_results[f"{d} slice{'s' if d > 1 else ''}"] = run_scores(model, num_slices=d)
        results["depth"] = depth_results
        if depth_results:
            fig = viz.plot_grouped_bars(depth_results, title=f"input depth, {ablation_iters} iterations each ({DATA_KIND})")
            best_depth = max(depth_results, key=lambda n: depth_results[n]["kidney"])
            display(Markdown(f"**After {ablation_iters} iterations the best kidney Dice comes from {best_depth} "
                             f"({depth_results[best_depth]['kidney']:.3f}) on these {DATA_KIND};** one short run per depth "
                             "cannot separate small differences from seed noise."))
        else:
            print("depth ablation skipped (depths is empty)")
        '''),
        md('''
        ## All results, as a file
        '''),
        code('''
        from kitsmsan.utils.io import atomic_write_json

        def plain(obj):
            return {k: plain(v) for k, v in obj.items()} if isinstance(obj, dict) else float(obj)

        atomic_write_json(ABL / "results.json", {"data": DATA_KIND, "ablation_iters": ablation_iters,
                                                 "test_cases": list(test_set), "results": plain(results)})
        print("written:", os.path.relpath(ABL / "results.json", ROOT))
        '''),
        md('''
        ## Summary

        * Post-processing with k = 1 caps the kidney Dice of any case with two kidneys; k = 2 removes that cap.
        * Voting and averaging give similar ensembles; they differ where networks disagree confidently.
        * Attention adds under 1% of parameters, so "more parameters" cannot explain a gain.
        * The [-200, 500] window keeps kidney and tumour unclipped; narrower windows start to clip them.

        **Exercises.** (1) Raise `ablation_iters` and check whether the deep-supervision difference survives.
        (2) Add a window that clips the kidney cortex (e.g. `-100:150`) and watch the kept share fall.
        (3) Repeat the depth ablation with two seeds: how large is the seed-to-seed difference?
        '''),
    ])


# ------------------------------------------------------------------------------------------------
# 06 slice viewer
# ------------------------------------------------------------------------------------------------


def nb06():
    return notebook([
        md('''
        # A slice viewer: ground truth, five networks, the vote, where they disagree, and attention

        Numbers hide where a network fails. This page puts every prediction of the test cases next to the
        CT: scroll through the slices, switch between the ground truth, each network, the ensemble, a
        *disagreement map* (how many of the five networks disagree with the majority at each voxel) and
        the level-0 attention weights of MSAN-V1 (§2.2). With a running kernel the case, the window
        level/width and the overlay opacity can be changed too. In the static book the slider and the
        layer buttons still work (the frames are pre-rendered); below the viewer, an animation plays
        without any kernel.
        '''),
        params(DATA_PARAMS + RUN_PARAMS + '''
num_cases_shown = 2        # test cases in the viewer
attention_variant = "msan_v1"   # whose attention weights are shown
max_slices = 24            # at most this many slices per case in the pre-rendered viewer
'''),
        code(SETUP, "hide-input"),
        code(RUNS_CELL, "hide-input"),
        code('''
        from kitsmsan.ensemble import majority_vote
        from kitsmsan.inference import predict_case
        from kitsmsan.postprocess import keep_largest_components
        from kitsmsan.widgets import SliceViewer, ViewerCase, attention_volume

        viewer_cases = {}
        for cid in split["test"][:num_cases_shown]:
            c = load_case(DATA / cid)
            raw = {v: predict_case(m, c.image, num_slices=runs[v]["config"]["num_slices"]) for v, m in models.items()}
            raw["ensemble"] = majority_vote(list(raw.values()))
            preds = {key: keep_largest_components(p, num_components=2) for key, p in raw.items()}
            attention = attention_volume(models[attention_variant], c.image) if attention_variant in models else None
            viewer_cases[cid] = ViewerCase(c.image, c.label, preds, attention)
        print(f"{len(viewer_cases)} cases, layers: {', '.join(next(iter(viewer_cases.values())).layers())}")
        '''),
        md('''
        ## The viewer
        '''),
        code('''
        viewer = SliceViewer(viewer_cases, max_slices=max_slices, image_width=380)
        viewer
        ''', "nbval-ignore-output"),
        md('''
        How it is built: every (layer, slice) frame is rendered once to a PNG (`kitsmsan.widgets.render_frame`)
        and held in nested `Stack` widgets; the slice slider and the layer buttons are linked to the stacks
        with `jslink`, which runs in the browser. That is why they work on this static page.
        '''),
        code('''
        viz.show_source(SliceViewer._load_case)
        '''),
        md('''
        ## The same, without any widget: an animation

        A matplotlib animation exported with `to_jshtml` carries its frames inside the page and plays offline.
        The first test case, ground truth and every network's post-processed prediction:
        '''),
        code('''
        first_id, first = next(iter(viewer_cases.items()))
        anim = viz.slice_animation(first.image, first.label, {k: first.preds[k] for k in [*VARIANTS, "ensemble"]},
                                   max_frames=max_slices, size=1.9)
        HTML(viz.animation_html(anim))
        ''', "nbval-ignore-output"),
        md('''
        ## Where the networks disagree

        Small multiples of the disagreement count (0 = all five agree) and the attention weights on the
        slices through the kidneys:
        '''),
        code('''
        dis = viz.disagreement_map(first.model_preds)
        zs = viz.pick_slices(first.label, 4)
        n = len(first.model_preds)
        fig = viz.plot_maps({f"z={z}": dis[z] for z in zs}, cmap="inferno", vmin=0, vmax=n - -(-n // 3),
                            title=f"{first_id}: how many of the {n} networks disagree with the majority ({DATA_KIND})")
        if first.attention is not None:
            fig = viz.plot_maps({f"z={z}": first.attention[z] for z in zs}, cmap="magma", vmin=0, vmax=1,
                                title=f"{first_id}: level-0 attention weights of {attention_variant}")
        print(f"{100 * np.mean(dis > 0):.2f}% of the voxels of {first_id} see at least one dissenting network; "
              f"{100 * np.mean(dis >= 2):.2f}% a 3-2 split or closer")
        '''),
        md('''
        **Exercises.** (1) In the viewer, find a slice where the vote is right and most networks are wrong.
        (2) Is the attention high where the networks disagree? Compare the two rows above. (3) Set
        `attention_variant="msan_v2"` and compare its level-0 attention with MSAN-V1's.
        '''),
    ])


NOTEBOOK_BUILDERS = {
    "01_data_exploration.ipynb": nb01,
    "02_model_tour.ipynb": nb02,
    "03_training.ipynb": nb03,
    "04_evaluation.ipynb": nb04,
    "05_ablations.ipynb": nb05,
    "06_slice_viewer.ipynb": nb06,
}


def render(name: str) -> str:
    """The JSON text of notebook ``name`` (stable: no outputs, no execution counts, fixed cell ids)."""
    nb = NOTEBOOK_BUILDERS[name]()
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"          # stable ids: regenerating gives an identical file
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a notebook differs from this script")
    parser.add_argument("--out", type=Path, default=NOTEBOOKS, help="output folder (default notebooks/)")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOK_BUILDERS:
        text = render(name)
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".ipynb.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if stale:
        print("out of date (run python scripts/make_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
