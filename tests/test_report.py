"""Run summaries: grouping by method, mean and spread over seeds, table and plot."""

import math
import statistics

import pytest

from maskcon_mini.report import (collect_runs, markdown_table, per_epoch_table, plot_recall_bars,
                                 run_label, summarise)
from maskcon_mini.runio import write_json, write_jsonl


def fake_run(folder, method, seed, recall_1, **config):
    write_json(folder / "config.json", {"method": method, "weight": 0.5,
                                        "target_temperature": 0.05, "seed": seed, **config})
    write_json(folder / "results.json", {
        "method": method, "seed": seed, "recall": {"1": recall_1, "2": recall_1 + 0.1},
        "map_at_r": 0.1, "knn_accuracy": 0.3, "coarse_recall_at_1": 0.8,
        "fine_mass": 0.4 if method != "selfcon" else None, "train_seconds": 60.0,
    })


def test_summary_groups_seeds_with_mean_and_std(tmp_path):
    for seed, value in ((1, 0.40), (2, 0.44), (3, 0.42)):
        fake_run(tmp_path / f"maskcon-{seed}", "maskcon", seed, value)
    fake_run(tmp_path / "selfcon-1", "selfcon", 1, 0.38)
    rows = summarise(collect_runs(tmp_path))

    assert [row["label"] for row in rows] == ["selfcon", "maskcon (w=0.5, T=0.05)"]
    maskcon = rows[1]
    assert maskcon["runs"] == 3
    assert maskcon["recall"][1][0] == pytest.approx(0.42)
    assert maskcon["recall"][1][1] == pytest.approx(statistics.stdev([0.40, 0.44, 0.42]))
    assert rows[0]["recall"][1] == (pytest.approx(0.38), 0.0)
    assert math.isnan(rows[0]["fine_mass"][0])


def test_unfinished_runs_are_skipped(tmp_path):
    fake_run(tmp_path / "done", "supcon", 1, 0.3)
    (tmp_path / "unfinished").mkdir()
    write_json(tmp_path / "unfinished" / "config.json", {"method": "maskcon"})
    assert [run.label for run in collect_runs(tmp_path)] == ["supcon"]


def test_labels_name_oracle_floor_and_weights():
    assert run_label({"method": "supcon", "train_labels": "fine"}) == "supcon (fine-label oracle)"
    assert run_label({"method": "maskcon", "untrained": True}) == "untrained (floor)"
    assert run_label({"method": "grafit", "weight": 0.3}) == "grafit (w=0.3)"


def test_markdown_table_shows_percentages(tmp_path):
    fake_run(tmp_path / "a", "supcon", 1, 0.375)
    table = markdown_table(summarise(collect_runs(tmp_path)))
    lines = table.splitlines()
    assert lines[0] == ("| method | runs | R@1 | R@2 | MAP@R | kNN acc | coarse R@1 | fine mass "
                        "| train s |")
    assert "| supcon | 1 | 37.5 | 47.5 | 10.0 |" in lines[2]


def test_recall_bar_plot_written(tmp_path):
    fake_run(tmp_path / "a", "supcon", 1, 0.3)
    rows = summarise(collect_runs(tmp_path))
    figure = plot_recall_bars(rows, tmp_path / "bars.png", ks=(1, 2))
    assert (tmp_path / "bars.png").read_bytes().startswith(b"\x89PNG")
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == ["R@1", "R@2"]


def test_recall_bar_plot_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no runs to plot"):
        plot_recall_bars([])
    fake_run(tmp_path / "a", "supcon", 1, 0.3)
    with pytest.raises(ValueError, match=r"K=\[5\] is not in the runs"):
        plot_recall_bars(summarise(collect_runs(tmp_path)), ks=(1, 5))


def test_per_epoch_table_averages_seeds(tmp_path):
    for seed, masses in ((1, (0.30, 0.34)), (2, (0.32, 0.36))):
        folder = tmp_path / f"maskcon-{seed}"
        fake_run(folder, "maskcon", seed, 0.4)
        write_jsonl(folder / "metrics.jsonl", [
            {"epoch": 1, "loss": 7.0, "fine_mass": masses[0], "supcon_fine_mass": 0.25},
            {"epoch": 2, "loss": 6.0, "fine_mass": masses[1], "supcon_fine_mass": 0.25,
             "recall": {"1": 0.4}},
        ])
    lines = per_epoch_table(collect_runs(tmp_path)).splitlines()
    assert lines[2] == "| maskcon (w=0.5, T=0.05) | 1 | 7.0000 | - | 0.3100 | 0.2500 |"
    assert lines[3] == "| maskcon (w=0.5, T=0.05) | 2 | 6.0000 | 0.4000 | 0.3500 | 0.2500 |"
