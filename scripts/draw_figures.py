"""Draw the README's three pictures from the code itself, so they cannot drift from it.

    python scripts/draw_figures.py --out images

* ``Dense.png``: early fusion, sex, age and BMI enter as three constant image channels;
* ``Dense2.png``: late fusion, the clinical vector is joined to the pooled image features;
* ``explanation.png``: the file-name format ``<patient>_<crop>_<label>-<sex>-<age>-<bmi>.<ext>``.

The networks are main.py's default model (``dense_net`` and its default depth, growth rate and
stem) built through :func:`models.build_model` at the demo's input size (176 x 102). A small demo
set drawn by ``synthetic.py`` is read back by the loader's dataset, and one of its samples is run
through each network: the input planes, the layers, their channel counts and feature-map sizes,
and where the clinical data enter are what that run shows. The file name is one of that set,
written by ``filenames.encode``, each field labelled where ``filenames.field_spans`` finds it.
:func:`main` returns the numbers it drew.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from hipx.data import filenames  # noqa: E402
from hipx.data import loader  # noqa: E402
from hipx.runs import runfiles  # noqa: E402
import main as train_cli  # noqa: E402
import synthetic  # noqa: E402
from hipx.core.cli import add_output  # noqa: E402
from hipx.models import build_model  # noqa: E402

DEMO_SIZE = (176, 102)  # the demo's --image_size (Makefile DEMO_FLAGS)
FIGURES = {"early": "Dense.png", "late": "Dense2.png", "filename": "explanation.png"}
WIDTH_IN, DPI = 9.0, 200  # shown about 800 px wide in a README: 9-10 pt text stays readable

IMAGE_EDGE, IMAGE_FILL = "#3b6ea5", "#dbe6f3"
CLINICAL_EDGE, CLINICAL_FILL = "#c8651b", "#fbe3cc"
HEAD_EDGE, HEAD_FILL = "#555555", "#eeeeee"
PLANE_NAMES = ("radiograph", "enhanced")  # loader.IMAGE_CHANNELS, in the loader's order


def example_sample(folder: Path, late_fuse: bool) -> dict:
    """One sample of a tiny demo set, built by the loader's dataset exactly as training builds it."""
    data = folder / "data"
    if not (data / synthetic.METADATA).exists():
        synthetic.generate(data, n_patients=20, seed=0, size=DEMO_SIZE)
    train = loader.list_split(data, "train")
    stats = loader.ClinicalStats.fit([filenames.decode(p) for p in train])
    # the first osteoporotic right hip: a patient whose label the picture can name
    path = next(p for p in train if filenames.decode(p).label == 1 and filenames.decode(p).crop == 1)
    dataset = loader.HipDataset([path], stats, DEMO_SIZE, early_fuse=not late_fuse)
    return {**dataset[0], "channels": dataset.channels}


def describe_network(late_fuse: bool, sample: dict) -> dict:
    """Build main.py's default model for one fusion mode and run ``sample`` through it, recording
    each stage's output shape: the numbers the picture shows."""
    defaults = train_cli.build_parser().parse_args([])
    model = build_model(defaults.model, in_chans=sample["channels"], late_fuse=late_fuse,
                        depth=defaults.depth, growth_rate=defaults.growthRate, norm=defaults.norm,
                        act=defaults.act, stem=defaults.stem).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.features.named_children())
    if model.clinical_mlp is not None:
        modules["clinical_mlp"] = model.clinical_mlp
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
             for name, m in modules.items()]
    image = sample["image"][None]
    with torch.no_grad():
        model(image, sample["clinical"][None] if late_fuse else None)
    for h in hooks:
        h.remove()

    names = list(model.features._modules)
    first_block = next(i for i, n in enumerate(names) if n.startswith("denseblock"))
    conv0 = model.features.conv0
    stages = [{"name": "stem", "kind": "stem", "modules": names[:first_block],
               "text": f"conv {conv0.kernel_size[0]}×{conv0.kernel_size[1]} /{conv0.stride[0]}"
                       + ("\nnorm, " + type(modules["relu0"]).__name__ if "relu0" in modules else "")
                       + (f"\nmax-pool /{modules['pool0'].stride}" if "pool0" in modules else ""),
               "channels": shapes[names[first_block - 1]][0], "size": shapes[names[first_block - 1]][1:]}]
    for name in names[first_block:]:
        if name.startswith("denseblock"):
            layers = len(modules[name])
            stages.append({"name": name, "kind": "block", "text": f"dense\nblock {name[-1]}\n{layers} layers",
                           "layers": layers, "channels": shapes[name][0], "size": shapes[name][1:]})
        elif name.startswith("transition"):
            stride = modules[name].pool.stride
            stages.append({"name": name, "kind": "transition", "text": f"trans-\nition\n/{stride}",
                           "channels": shapes[name][0], "size": shapes[name][1:]})
    planes = image[0].numpy()
    n_image = loader.IMAGE_CHANNELS
    clinical_planes = planes[n_image:]
    if late_fuse:
        mlp = [m for m in model.clinical_mlp if isinstance(m, torch.nn.Linear)]
        clinical = {"enters": "pooled features", "mlp": [mlp[0].in_features, *(m.out_features for m in mlp)],
                    "values": sample["clinical"].tolist()}
    else:
        # every clinical plane is one constant: the patient's normalised value
        values = [float(p.flat[0]) for p in clinical_planes]
        assert all(np.all(p == v) for p, v in zip(clinical_planes, values))
        assert np.allclose(values, sample["clinical"].numpy())
        clinical = {"enters": "input channels", "channels": len(values), "values": values}
    return {
        "model": defaults.model, "depth": defaults.depth, "growth_rate": defaults.growthRate,
        "late_fuse": late_fuse, "input_channels": int(model.in_chans), "image_channels": n_image,
        "input_size": tuple(DEMO_SIZE), "stages": stages, "pooled": int(model.num_features),
        "final_act": type(model.final_act).__name__, "head_in": int(model.classifier.in_features), "outputs": int(model.classifier.out_features),
        "clinical": clinical, "planes": planes, "path": sample["path"],
    }


# ---------------------------------------------------------------------------------------------
# Drawing helpers (coordinates in inches: one axes covering the whole figure)

def _canvas(height: float):
    fig = plt.figure(figsize=(WIDTH_IN, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH_IN)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    runfiles.write_bytes(path, buffer.getvalue())


def _box(ax, x: float, y: float, w: float, h: float, text: str, edge: str, fill: str, size: float = 10,
         weight: str = "normal") -> None:
    """A rounded box centred at (x, y)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.06",
                                linewidth=1.2, edgecolor=edge, facecolor=fill))
    ax.text(x, y, text, ha="center", va="center", fontsize=size, weight=weight, linespacing=1.15)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], color: str = "#333333",
           style: str = "-|>", connection: str = "arc3") -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11, linewidth=1.2,
                                 color=color, shrinkA=0, shrinkB=0, connectionstyle=connection))


def _planes(ax, x: float, top: float, planes: np.ndarray, n_image: int, names: list[str],
            values: list[float]) -> tuple[float, float]:
    """The network input as a row of planes from (x, top) on, a caption under each; returns the
    row's right edge and the bottom of its captions."""
    h_in = 1.0
    w_in = h_in * planes.shape[2] / planes.shape[1]
    gap = 0.3
    bottom = top - h_in
    for i, plane in enumerate(planes):
        x0 = x + i * (w_in + gap)
        if i >= n_image:  # a constant plane: its colour says constant, the text which value
            ax.add_patch(FancyBboxPatch((x0, bottom), w_in, h_in, boxstyle="square,pad=0", linewidth=1.2,
                                        edgecolor=CLINICAL_EDGE, facecolor=CLINICAL_FILL))
            ax.text(x0 + w_in / 2, bottom + h_in / 2, f"{values[i - n_image]:+.2f}", ha="center", va="center",
                    fontsize=10)
            caption, colour = names[i], CLINICAL_EDGE
        else:
            ax.imshow(plane, cmap="gray", vmin=0, vmax=1, extent=(x0, x0 + w_in, bottom, top),
                      interpolation="antialiased", zorder=1)
            ax.add_patch(FancyBboxPatch((x0, bottom), w_in, h_in, boxstyle="square,pad=0", linewidth=1.2,
                                        edgecolor=IMAGE_EDGE, facecolor="none", zorder=2))
            caption, colour = names[i], "black"
        ax.text(x0 + w_in / 2, bottom - 0.06, caption, ha="center", va="top", fontsize=9.5, color=colour)
    return x + len(planes) * (w_in + gap) - gap, bottom - 0.32


def _network_row(ax, info: dict, x_start: float, y: float, gap: float) -> dict[str, tuple[float, float, float]]:
    """The stages left to right from x_start; box height follows the feature-map height. Returns
    each drawn element's (x centre, half width, half height)."""
    widths = {"stem": 0.9, "block": 0.7, "transition": 0.56}
    h_max = max(s["size"][0] for s in info["stages"])
    placed = {}
    x = x_start
    for s in info["stages"]:
        w = widths[s["kind"]]
        h = 0.6 + 0.7 * (s["size"][0] / h_max) ** 0.5
        cx = x + w / 2
        _box(ax, cx, y, w, h, s["text"], IMAGE_EDGE, IMAGE_FILL if s["kind"] != "transition" else "white")
        ax.text(cx, y - h / 2 - 0.06, f"{s['channels']} ch\n{s['size'][0]}×{s['size'][1]}", ha="center",
                va="top", fontsize=9.5, color="#333333", linespacing=1.1)
        placed[s["name"]] = (cx, w / 2, h / 2)
        x += w + gap
    return placed


def _chain(ax, placed: dict, y: float) -> None:
    items = list(placed.values())
    for (x0, hw0, _), (x1, hw1, _) in zip(items, items[1:]):
        _arrow(ax, (x0 + hw0, y), (x1 - hw1, y))


def draw_network(info: dict, path: Path) -> None:
    """Dense.png / Dense2.png: input planes, the network's stages, the head, and where the clinical
    data enter."""
    late = info["late_fuse"]
    height = 4.25
    fig, ax = _canvas(height)
    n_image = info["image_channels"]
    clinical_names = [n.upper() if n == "bmi" else n for n in loader.CLINICAL_NAMES]
    names = list(PLANE_NAMES[:n_image]) + clinical_names
    title = ("Late fusion: the clinical vector joins the pooled image features" if late else
             "Early fusion: sex, age and BMI enter as three constant image channels")
    ax.text(0.15, height - 0.12, title, fontsize=13, weight="bold", va="top")
    ax.text(0.15, height - 0.5, f"{info['model']} (DenseNet-BC, depth {info['depth']}, growth rate "
            f"{info['growth_rate']}) at the demo's input size {info['input_size'][0]} × {info['input_size'][1]}",
            fontsize=10, va="top", color="#444444")

    x0, top = 0.15, height - 1.15
    ax.text(x0, top + 0.08, f"network input: {info['input_channels']} channels × "
            f"{info['input_size'][0]} × {info['input_size'][1]}", va="bottom", fontsize=10, weight="bold")
    right, below = _planes(ax, x0, top, info["planes"], n_image, names, info["clinical"]["values"])

    gap = 0.12
    y_net = 0.98
    placed = _network_row(ax, info, x0, y_net, gap)
    x_last, hw_last, _ = list(placed.values())[-1]
    x = x_last + hw_last + gap
    head = [("pool", 0.9, f"norm, {info['final_act']}\navg pool\n→ {info['pooled']}", IMAGE_EDGE, IMAGE_FILL)]
    if late:
        head.append(("join", 0.74, f"join\n{info['pooled']} + {info['clinical']['mlp'][-1]}\n= {info['head_in']}",
                     CLINICAL_EDGE, CLINICAL_FILL))
    head += [("linear", 0.74, f"linear\n{info['head_in']} → {info['outputs']}", HEAD_EDGE, HEAD_FILL),
             ("logit", 0.8, "logit\n(osteo-\nporosis)", HEAD_EDGE, "white")]
    for name, w, text, edge, fill in head:
        _box(ax, x + w / 2, y_net, w, 0.86, text, edge, fill)
        placed[name] = (x + w / 2, w / 2, 0.43)
        x += w + gap
    _chain(ax, placed, y_net)

    # the whole input row feeds the first convolution
    stem_x, _, stem_hh = placed["stem"]
    ax.plot([x0, x0, right, right], [below + 0.06, below, below, below + 0.06], color="#333333", linewidth=1.2)
    _arrow(ax, (stem_x, below), (stem_x, y_net + stem_hh))
    if late:
        mlp = info["clinical"]["mlp"]
        jx, _, jhh = placed["join"]
        cy = top - 0.45
        text = "clinical vector\n" + ", ".join(f"{n} {v:+.2f}" for n, v in zip(clinical_names,
                                                                                info["clinical"]["values"]))
        vx, vw = jx - 2.75, 2.5
        _box(ax, vx, cy, vw, 0.62, text, CLINICAL_EDGE, CLINICAL_FILL)
        mx, mw = jx + 0.15, 1.3
        _box(ax, mx, cy, mw, 0.6, "MLP\n" + " → ".join(map(str, mlp)), CLINICAL_EDGE, "white")
        _arrow(ax, (vx + vw / 2, cy), (mx - mw / 2, cy), color=CLINICAL_EDGE)
        _arrow(ax, (jx, cy - 0.3), (jx, y_net + jhh), color=CLINICAL_EDGE)
    else:
        ax.text(right + 0.3, top - 0.5, "sex, age and BMI, normalised with the\ntraining split's mean and SD, "
                "each fill\na whole channel: the network sees\nthem from its first convolution on",
                fontsize=10, va="center", color=CLINICAL_EDGE)
    _save(fig, path)


FIELD_TEXT = {
    "patient": "patient ID\nsame for all images\nof a patient",
    "crop": "crop\n1, 2, ... per patient\n(e.g. right, left hip)",
    "label": "label\n0 normal\n1 osteoporosis",
    "sex": "sex\n1 female, 0 male",
    "age": "age\nyears",
    "bmi": "BMI\nkg/m², unrounded",
    "ext": "image\n.png or .npy",
}
FIELD_COLOURS = ("#3b6ea5", "#6a8d2f", "#b03a2e", "#c8651b", "#7d4ea3", "#1f8a8a", "#666666")


def draw_filename(name: str, path: Path) -> dict[str, str]:
    """explanation.png: ``name`` in large type, each field underlined in its colour and labelled.
    Returns each field's text as drawn."""
    spans = filenames.field_spans(name)
    height = 3.2
    fig, ax = _canvas(height)
    ax.text(0.15, height - 0.15, "The file name carries the label and the clinical data", fontsize=13,
            weight="bold", va="top")
    size = 24
    char_w = size / 72 * 0.6  # DejaVu Sans Mono advance: 0.6 em
    x0 = (WIDTH_IN - len(name) * char_w) / 2
    y_name = 1.6
    colour_of = dict(zip(spans, FIELD_COLOURS))
    for i, ch in enumerate(name):
        field = next((k for k, (a, b) in spans.items() if a <= i < b), None)
        ax.text(x0 + (i + 0.5) * char_w, y_name, ch, family="DejaVu Sans Mono", fontsize=size, ha="center",
                va="center", color=colour_of.get(field, "#999999"), weight="bold" if field else "normal")
    drawn = {}
    above = ("patient", "label", "age", "ext")
    slots = {"above": np.linspace(1.0, WIDTH_IN - 1.0, len(above)),
             "below": np.linspace(1.6, WIDTH_IN - 1.6, len(spans) - len(above))}
    counters = {"above": 0, "below": 0}
    for field, (a, b) in spans.items():
        drawn[field] = name[a:b]
        colour = colour_of[field]
        side = "above" if field in above else "below"
        tx = slots[side][counters[side]]
        counters[side] += 1
        xa, xb = x0 + a * char_w + 0.02, x0 + b * char_w - 0.02
        yl = y_name + (0.25 if side == "above" else -0.25)
        ax.plot([xa, xb], [yl, yl], color=colour, linewidth=2.2, solid_capstyle="butt")
        ty = y_name + (0.55 if side == "above" else -0.55)
        ax.plot([(xa + xb) / 2, tx], [yl, ty + (-0.04 if side == "above" else 0.04)], color=colour, linewidth=0.9)
        ax.text(tx, ty, FIELD_TEXT[field], ha="center", va="bottom" if side == "above" else "top", fontsize=10,
                color=colour, linespacing=1.15)
    ax.text(WIDTH_IN / 2, 0.12, "one file per image in data/train/, data/val/, data/test/; "
            "a missing sex, age or BMI is written NA", ha="center", va="bottom", fontsize=10, color="#444444")
    _save(fig, path)
    return drawn


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output(p, "folder for the three PNGs", default="images", overwrite="pictures already in --out")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Draw the three pictures into ``--out``; return the numbers drawn (per picture)."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    existing = [str(out / f) for f in FIGURES.values() if (out / f).exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"{', '.join(existing)} exist; add --overwrite to redraw them")
    drawn = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("early", "late"):
            info = describe_network(mode == "late", example_sample(Path(tmp), mode == "late"))
            draw_network(info, out / FIGURES[mode])
            drawn[mode] = {k: v for k, v in info.items() if k not in ("planes", "path")}
            name = os.path.basename(info["path"])
        drawn["filename"] = {"name": name, "fields": draw_filename(name, out / FIGURES["filename"])}
    for key, file in FIGURES.items():
        print(out / file)
    return drawn


if __name__ == "__main__":
    main()
