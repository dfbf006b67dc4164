"""Plot helpers: figure structure, PNG output and input validation."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from maskcon_mini.plots import (  # noqa: E402
    format_temperature,
    plot_sample_relations,
    plot_target_panels,
    plot_target_rows,
    plot_temperature_weight_grid,
    save_figure,
)
from maskcon_mini.targets import maskcon_targets, selfcon_targets, supcon_targets  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
B, K, D = 4, 6, 8


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def bench():
    """A small batch and queue with coarse labels and unit keys."""
    generator = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(B, D, generator=generator), dim=1)
    queue_keys = torch.nn.functional.normalize(torch.randn(K, D, generator=generator), dim=1)
    labels = torch.tensor([0, 1, 0, 1])
    queue_labels = torch.tensor([0, 0, 1, 1, 0, 1])
    return keys, queue_keys, labels, queue_labels


def titled_axes(figure):
    return [ax for ax in figure.axes if ax.get_title()]


def assert_png(path):
    assert path.is_file()
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000


# plot_target_rows and plot_target_panels


def test_target_rows_figure_and_png(bench, tmp_path):
    keys, queue_keys, labels, queue_labels = bench
    targets = maskcon_targets(keys, queue_keys, labels, queue_labels, 0.1)
    figure = plot_target_rows(targets, title="MaskCon T=0.1", row_groups=labels.tolist(),
                              column_groups=queue_labels.tolist())
    assert isinstance(figure, Figure)
    assert [ax.get_title() for ax in titled_axes(figure)] == ["MaskCon T=0.1"]
    heatmap = titled_axes(figure)[0]
    labels_shown = [tick.get_text() for tick in heatmap.get_xticklabels()]
    assert labels_shown == ["pos"] + [f"q{j}" for j in range(1, K + 1)]
    assert len(figure.axes) == 2  # the heatmap and its colour bar
    written = save_figure(figure, tmp_path / "rows.png", dpi=50)
    assert_png(written)


def test_target_panels_titles_and_grid(bench):
    keys, queue_keys, labels, queue_labels = bench
    panels = {
        "SelfCon": selfcon_targets(B, K),
        "SupCon": supcon_targets(labels, queue_labels),
        "MaskCon": maskcon_targets(keys, queue_keys, labels, queue_labels, 0.05),
    }
    figure = plot_target_panels(panels, ncols=2, row_labels=list("abcd"))
    assert [ax.get_title() for ax in titled_axes(figure)] == list(panels)
    # 2x2 grid with one unused cell removed, plus the colour bar.
    assert len(figure.axes) == 4
    first = titled_axes(figure)[0]
    assert [tick.get_text() for tick in first.get_yticklabels()] == list("abcd")


def test_target_panels_accept_numpy(bench):
    keys, queue_keys, labels, queue_labels = bench
    figure = plot_target_panels({"a": supcon_targets(labels, queue_labels).numpy()})
    assert [ax.get_title() for ax in titled_axes(figure)] == ["a"]


@pytest.mark.parametrize(
    "panels, match",
    [
        ({}, "non-empty"),
        ({"a": torch.ones(3)}, "2 dimensions"),
        ({"a": torch.ones(2, 1)}, "at least 2 columns"),
        ({"a": torch.ones(2, 3), "b": torch.ones(2, 4)}, "same shape"),
        ({"a": torch.tensor([[0.5, -0.1, 0.6]])}, "negative"),
        ({"a": torch.tensor([[0.5, math.nan, 0.5]])}, "NaN or inf"),
        ({"a": [["x", "y"]]}, "numeric"),
    ],
)
def test_target_panels_reject_bad_targets(panels, match):
    with pytest.raises(ValueError, match=match):
        plot_target_panels(panels)


def test_target_panels_reject_bad_labels():
    targets = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="row_labels must have one entry per row"):
        plot_target_panels({"a": targets}, row_labels=["only one"])
    with pytest.raises(ValueError, match="column_labels must have one entry per column"):
        plot_target_panels({"a": targets}, column_labels=["pos", "q1"])
    with pytest.raises(ValueError, match="column_groups must have one entry per queue entry"):
        plot_target_panels({"a": targets}, column_groups=[0, 1, 0])
    with pytest.raises(ValueError, match="ncols must be an int >= 1"):
        plot_target_panels({"a": targets}, ncols=0)


# plot_temperature_weight_grid


def test_temperature_weight_grid_titles(bench, tmp_path):
    keys, queue_keys, labels, queue_labels = bench
    temperatures, weights = [0.1, math.inf], [0.0, 0.5, 1.0]
    rows = torch.stack([
        torch.stack([maskcon_targets(keys[:1], queue_keys, labels[:1], queue_labels, t, w)[0]
                     for w in weights])
        for t in temperatures
    ])
    same = queue_labels == labels[0]
    figure = plot_temperature_weight_grid(rows, temperatures, weights, same_coarse=same)
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == [
        "T = 0.1, w = 0", "T = 0.1, w = 0.5", "T = 0.1, w = 1",
        "T = inf, w = 0", "T = inf, w = 0.5", "T = inf, w = 1",
    ]
    assert_png(save_figure(figure, tmp_path / "grid.png", dpi=40))


def test_temperature_weight_grid_rejects_bad_input():
    rows = torch.full((2, 3, 4), 0.25)
    with pytest.raises(ValueError, match="rows must have shape"):
        plot_temperature_weight_grid(rows, [0.1], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="3 dimensions"):
        plot_temperature_weight_grid(rows[0], [0.1, 1.0], [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="same_coarse must have one entry per queue entry"):
        plot_temperature_weight_grid(rows, [0.1, 1.0], [0.0, 0.5, 1.0], same_coarse=[True])
    with pytest.raises(ValueError, match="negative"):
        plot_temperature_weight_grid(-rows, [0.1, 1.0], [0.0, 0.5, 1.0])


# plot_sample_relations


def test_sample_relations_axes(bench, tmp_path):
    keys, queue_keys, labels, queue_labels = bench
    rng = np.random.default_rng(0)
    anchor = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]  # uint8 HxWx3
    images += [torch.rand(3, 32, 32) for _ in range(K)]  # float CxHxW in [0, 1]
    relations = {
        "Self": selfcon_targets(1, K)[0],
        "Coarse": supcon_targets(labels[:1], queue_labels)[0],
        "MaskCon": maskcon_targets(keys[:1], queue_keys, labels[:1], queue_labels, 0.05)[0],
    }
    captions = ["mirrored"] + [f"image {j}" for j in range(K)]
    figure = plot_sample_relations(anchor, images, relations, captions=captions,
                                   groups=[0] + queue_labels.tolist(), anchor_caption="anchor: cat",
                                   title="relations")
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 2 + K + 1
    assert figure.axes[0].get_title() == "anchor: cat"
    assert [ax.get_title() for ax in figure.axes[1:1 + 1 + K]] == captions
    heatmap = figure.axes[-1]
    assert heatmap.get_title() == "target weights"
    assert [tick.get_text() for tick in heatmap.get_yticklabels()] == list(relations)
    assert figure._suptitle.get_text() == "relations"
    assert_png(save_figure(figure, tmp_path / "nested" / "relations.png", dpi=40))


def test_sample_relations_rejects_bad_input():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    row = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="at least one queue entry"):
        plot_sample_relations(image, [image], {"Self": torch.tensor([1.0])})
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_sample_relations(image, [image, image], {})
    with pytest.raises(ValueError, match="one weight per image"):
        plot_sample_relations(image, [image, image, image], {"Self": row})
    with pytest.raises(ValueError, match="must be an RGB image"):
        plot_sample_relations(np.zeros((8, 8, 4)), [image, image], {"Self": row})
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        plot_sample_relations(image, [image, np.full((8, 8, 3), 2.0)], {"Self": row})
    with pytest.raises(ValueError, match="captions must have one entry per image"):
        plot_sample_relations(image, [image, image], {"Self": row}, captions=["a"])


# save_figure and helpers


def test_save_figure_rejects_other_formats(tmp_path):
    figure = plot_target_rows(torch.full((1, 2), 0.5))
    with pytest.raises(ValueError, match="must end in .png"):
        save_figure(figure, tmp_path / "rows.svg")
    with pytest.raises(ValueError, match="matplotlib Figure"):
        save_figure("not a figure", tmp_path / "rows.png")
    with pytest.raises(ValueError, match="dpi must be >= 1"):
        save_figure(figure, tmp_path / "rows.png", dpi=0)
    assert not any(tmp_path.iterdir())


def test_save_figure_overwrites(tmp_path):
    figure = plot_target_rows(torch.full((1, 2), 0.5))
    path = tmp_path / "rows.png"
    save_figure(figure, path, dpi=30)
    save_figure(figure, path, dpi=30)
    assert_png(path)


def test_format_temperature():
    assert format_temperature(math.inf) == "inf"
    assert format_temperature(0.05) == "0.05"
    assert format_temperature(1.0) == "1"
