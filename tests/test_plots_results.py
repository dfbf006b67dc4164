"""Results figures: training curves, fine mass, 2-D maps and retrieval grids."""

import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402

from maskcon_mini.plots import (  # noqa: E402
    WRONG_COLOR,
    plot_embedding_2d,
    plot_fine_mass,
    plot_retrieval_grid,
    plot_training_curves,
    project_2d,
    save_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def epoch_records(losses, recalls=None, fine_mass=None, supcon_fine_mass=None, score_every=1):
    """Epoch records shaped like the rows of metrics.jsonl (K values as strings)."""
    records = []
    for index, loss in enumerate(losses):
        epoch = index + 1
        record = {"epoch": epoch, "step": 10 * epoch, "loss": loss, "lr": 0.1, "seconds": 1.0}
        if fine_mass is not None:
            record["fine_mass"] = fine_mass[index]
        if supcon_fine_mass is not None:
            record["supcon_fine_mass"] = supcon_fine_mass[index]
        if recalls is not None and epoch % score_every == 0:
            record["recall"] = {str(k): values[index] for k, values in recalls.items()}
        records.append(record)
    return records


def lines_with_label(ax, text):
    return [line for line in ax.get_lines() if text in line.get_label()]


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000


# plot_training_curves


def test_curves_single_run_draws_every_k():
    records = epoch_records([3.0, 2.5, 2.0], recalls={1: [0.2, 0.3, 0.4], 5: [0.5, 0.6, 0.7]})
    figure = plot_training_curves(records)
    loss_ax, recall_ax = figure.axes
    assert loss_ax.get_title() == "training loss"
    assert recall_ax.get_title() == "fine Recall@K (test set)"
    assert loss_ax.get_lines()[0].get_ydata().tolist() == [3.0, 2.5, 2.0]
    assert [line.get_label() for line in recall_ax.get_lines()] == ["R@1", "R@5"]
    assert np.allclose(recall_ax.get_lines()[0].get_ydata(), [20.0, 30.0, 40.0])
    assert loss_ax.get_legend() is None


def test_curves_recall_only_on_scored_epochs():
    records = epoch_records([3.0, 2.5, 2.0, 1.5], recalls={1: [0.1, 0.2, 0.3, 0.4]}, score_every=2)
    figure = plot_training_curves(records)
    recall_line = figure.axes[1].get_lines()[0]
    assert recall_line.get_xdata().tolist() == [2, 4]
    assert np.allclose(recall_line.get_ydata(), [20.0, 40.0])


def test_curves_accept_int_k_records():
    records = [{"epoch": 1, "loss": 1.0, "recall": {1: 0.5}}, {"epoch": 2, "loss": 0.5, "recall": {1: 0.75}}]
    figure = plot_training_curves(records)
    assert np.allclose(figure.axes[1].get_lines()[0].get_ydata(), [50.0, 75.0])


def test_curves_mean_and_band_over_seeds():
    seed_a = epoch_records([2.0, 1.0], recalls={1: [0.2, 0.4], 5: [0.5, 0.6]})
    seed_b = epoch_records([4.0, 3.0], recalls={1: [0.4, 0.6], 5: [0.7, 0.8]})
    other = epoch_records([5.0, 5.0], recalls={1: [0.1, 0.1], 5: [0.3, 0.3]})
    figure = plot_training_curves({"maskcon": [seed_a, seed_b], "selfcon": other})
    loss_ax, recall_ax = figure.axes
    assert lines_with_label(loss_ax, "maskcon")[0].get_ydata().tolist() == [3.0, 2.0]
    assert [line.get_label() for line in recall_ax.get_lines()] == ["maskcon, R@1", "selfcon, R@1"]
    assert np.allclose(recall_ax.get_lines()[0].get_ydata(), [30.0, 50.0])
    bands = [c for c in loss_ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1, "only the label with two seeds gets a std band"
    assert loss_ax.get_legend() is not None


def test_curves_reject_bad_input():
    with pytest.raises(ValueError, match="empty"):
        plot_training_curves({})
    with pytest.raises(ValueError, match="epoch"):
        plot_training_curves([{"loss": 1.0}])
    with pytest.raises(ValueError, match="contains no epoch records"):
        plot_training_curves({"maskcon": []})
    with pytest.raises(ValueError, match=r"K=\[10\]"):
        plot_training_curves(epoch_records([1.0], recalls={1: [0.5]}), ks=[10])
    with pytest.raises(ValueError, match="list of epoch records"):
        plot_training_curves(3)


# plot_fine_mass


def test_fine_mass_solid_and_dashed_lines():
    maskcon = epoch_records([1.0, 1.0, 1.0], fine_mass=[0.3, 0.4, 0.5], supcon_fine_mass=[0.25, 0.25, 0.25])
    figure = plot_fine_mass({"maskcon": maskcon})
    ax = figure.axes[0]
    own, supcon = ax.get_lines()
    assert own.get_label() == "maskcon: its targets"
    assert own.get_linestyle() == "-"
    assert own.get_ydata().tolist() == [0.3, 0.4, 0.5]
    assert supcon.get_linestyle() == "--"
    assert supcon.get_ydata().tolist() == [0.25, 0.25, 0.25]
    assert own.get_color() == supcon.get_color()
    assert ax.get_ylim()[0] == 0.0


def test_fine_mass_selfcon_has_only_dashed_line():
    selfcon = epoch_records([1.0, 1.0], supcon_fine_mass=[0.25, 0.26])
    figure = plot_fine_mass({"selfcon": selfcon})
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == ["selfcon: SupCon targets on the same queue"]


def test_fine_mass_skips_nan_epochs():
    records = epoch_records([1.0, 1.0, 1.0], fine_mass=[0.3, float("nan"), 0.5])
    own = plot_fine_mass(records).axes[0].get_lines()[0]
    assert own.get_xdata().tolist() == [1, 3]


# project_2d


def two_clusters(count=30, dim=6):
    generator = np.random.default_rng(0)
    centre = np.zeros(dim)
    centre[0] = 1.0
    first = centre + 0.05 * generator.standard_normal((count, dim))
    second = -centre + 0.05 * generator.standard_normal((count, dim))
    return np.concatenate([first, second])


def test_pca_separates_clusters_deterministically():
    features = two_clusters()
    points, name = project_2d(features, method="pca")
    assert name == "PCA"
    assert points.shape == (60, 2)
    # The first component runs along feature 0, with the sign that makes its largest loading
    # positive, so the cluster around +e0 lands on the positive side.
    assert np.all(points[:30, 0] > 0)
    assert np.all(points[30:, 0] < 0)
    again, _ = project_2d(torch.from_numpy(features), method="pca")
    assert np.allclose(points, again)


def test_pca_normalises_rows():
    features = two_clusters()
    scaled = features * np.linspace(1, 50, len(features))[:, None]
    assert np.allclose(project_2d(features, method="pca")[0], project_2d(scaled, method="pca")[0])


def test_pca_handles_one_feature():
    points, _ = project_2d(np.array([[1.0], [-1.0], [2.0]]), method="pca")
    assert points.shape == (3, 2)
    assert np.all(points[:, 1] == 0)


def test_tsne_maps_small_input():
    pytest.importorskip("sklearn")
    points, name = project_2d(two_clusters(count=8), method="tsne", seed=0)
    assert name == "t-SNE"
    assert points.shape == (16, 2)
    assert np.all(np.isfinite(points))


def test_auto_falls_back_to_pca(monkeypatch):
    # A None entry makes the import raise ImportError, also when an earlier test imported it.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    _, name = project_2d(two_clusters(), method="auto")
    assert name == "PCA"
    with pytest.raises(ImportError, match="scikit-learn"):
        project_2d(two_clusters(), method="tsne")


def test_project_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        project_2d(two_clusters(), method="umap")
    with pytest.raises(ValueError, match="at least 3 rows"):
        project_2d(np.ones((2, 4)), method="pca")
    with pytest.raises(ValueError, match="NaN or inf"):
        project_2d(np.array([[1.0, 0.0], [0.0, 1.0], [np.nan, 1.0]]), method="pca")
    with pytest.raises(ValueError, match="2 dimensions"):
        project_2d(np.ones(5), method="pca")


# plot_embedding_2d


def test_embedding_map_panels_and_legend():
    points = np.random.default_rng(0).standard_normal((8, 2))
    fine = [0, 1, 2, 3, 0, 1, 2, 3]
    coarse = [0, 0, 1, 1, 0, 0, 1, 1]
    figure = plot_embedding_2d({"maskcon": points, "supcon": points + 1}, fine, coarse,
                               fine_names=["cat", "dog", "car", "ship"], coarse_names=["animal", "vehicle"],
                               title="t-SNE")
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["maskcon", "supcon"]
    scatter = [c for c in figure.axes[0].collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in scatter) == 8
    legend_labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend_labels == ["cat", "dog", "car", "ship", "animal", "vehicle"]


def test_embedding_map_many_classes_drops_colour_legend():
    count = 25
    figure = plot_embedding_2d({"run": np.zeros((count, 2))}, list(range(count)), [0] * count)
    legend_labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend_labels == ["coarse 0"]


def test_embedding_map_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        plot_embedding_2d({}, [0], [0])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plot_embedding_2d({"run": np.zeros((3, 3))}, [0, 1, 2], [0, 0, 0])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        plot_embedding_2d({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))}, [0, 1, 2], [0, 0, 0])
    with pytest.raises(ValueError, match="fine_labels"):
        plot_embedding_2d({"run": np.zeros((3, 2))}, [0, 1], [0, 0, 0])
    with pytest.raises(ValueError, match="coarse_labels"):
        plot_embedding_2d({"run": np.zeros((3, 2))}, [0, 1, 2], [0])


# plot_retrieval_grid


def image(value):
    return np.full((8, 8, 3), value, dtype=np.uint8)


def test_retrieval_grid_frames_wrong_neighbours_red(tmp_path):
    queries = [image(10), image(200)]
    neighbours = [[image(20), image(30), image(40)], [image(210), image(220), image(230)]]
    figure = plot_retrieval_grid(queries, neighbours, [0, 1], [[0, 1, 0], [1, 1, 2]],
                                 class_names=["cat", "dog", "car"], title="grid")
    assert len(figure.axes) == 2 * 4
    red_axes = [ax for ax in figure.axes
                if matplotlib.colors.same_color(ax.spines["top"].get_edgecolor(), WRONG_COLOR)]
    assert sorted(ax.get_title() for ax in red_axes) == ["car", "dog"]
    assert figure.axes[0].get_title() == "query: cat"
    assert figure.axes[4].get_title() == "query: dog"
    assert_png(save_figure(figure, tmp_path / "grid.png"))


def test_retrieval_grid_accepts_tensors_and_pil():
    from PIL import Image

    queries = [torch.rand(3, 8, 8)]
    neighbours = [[Image.fromarray(image(5)), np.random.default_rng(0).random((8, 8, 3))]]
    figure = plot_retrieval_grid(queries, neighbours, [3], [[3, 4]])
    assert [ax.get_title() for ax in figure.axes] == ["query: 3", "3", "4"]


def test_retrieval_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        plot_retrieval_grid([], [], [], [])
    with pytest.raises(ValueError, match="neighbour_images"):
        plot_retrieval_grid([image(0)], [], [0], [[0]])
    with pytest.raises(ValueError, match="query_labels"):
        plot_retrieval_grid([image(0)], [[image(1)]], [0, 1], [[0]])
    with pytest.raises(ValueError, match=r"neighbour_images\[1\]"):
        plot_retrieval_grid([image(0), image(1)], [[image(1), image(2)], [image(3)]], [0, 1],
                            [[0, 0], [1]])
    with pytest.raises(ValueError, match=r"neighbour_labels\[0\]"):
        plot_retrieval_grid([image(0)], [[image(1), image(2)]], [0], [[0]])
    with pytest.raises(ValueError, match="at least one neighbour"):
        plot_retrieval_grid([image(0)], [[]], [0], [[]])
    with pytest.raises(ValueError, match="RGB"):
        plot_retrieval_grid([np.zeros((8, 8, 4))], [[image(1)]], [0], [[0]])


def test_method_colours_match_across_figures(tmp_path):
    from matplotlib.colors import to_hex

    from maskcon_mini.report import collect_runs, plot_recall_bars, summarise
    from maskcon_mini.runio import write_json, write_jsonl

    methods = {"supcon": 0.40, "maskcon": 0.44, "selfcon": 0.41}
    for method, recall in methods.items():
        folder = tmp_path / method
        write_json(folder / "config.json", {"method": method, "weight": 0.5,
                                            "target_temperature": 0.1, "seed": 1})
        write_json(folder / "results.json", {"method": method, "seed": 1,
                                             "recall": {"1": recall}, "fine_mass": 0.3})
        write_jsonl(folder / "metrics.jsonl", epoch_records(
            [2.0, 1.5], recalls={1: [recall - 0.02, recall]}, fine_mass=[0.3, 0.35],
            supcon_fine_mass=[0.25, 0.25]))
    runs = collect_runs(tmp_path)
    records = {run.label: [run.metrics] for run in runs}

    bars = plot_recall_bars(summarise(runs), ks=(1,))
    curves = plot_training_curves(records)
    fine_mass = plot_fine_mass(records)

    from matplotlib.container import BarContainer

    bar_groups = [c for c in bars.axes[0].containers if isinstance(c, BarContainer)]
    bar_colours = {group.get_label().split(" (n=")[0]: to_hex(group.patches[0].get_facecolor())
                   for group in bar_groups}
    assert bar_colours["maskcon (w=0.5, T=0.1)"] == to_hex("C3")
    assert bar_colours["supcon"] == to_hex("C1")
    assert bar_colours["selfcon"] == to_hex("C0")
    for label, colour in bar_colours.items():
        assert to_hex(lines_with_label(curves.axes[0], label)[0].get_color()) == colour, label
        assert to_hex(lines_with_label(fine_mass.axes[0], label)[0].get_color()) == colour, label
