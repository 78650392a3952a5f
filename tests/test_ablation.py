"""Table IV ablation queue and report (stages/ablation.py): commands, `dvc exp show --json` parsing, statistics."""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from stages import ablation


def _exp(name, lse_d, fid, mouth_l1, dataset="synthetic"):
    """One experiment record in DVC 3's `dvc exp show --json` nesting."""
    evaluate = {"extractors": {"lse": "syncnet_tavce", "fid": "dlib_resnet_v1", "csim": "dlib_resnet_v1",
                               "lmd": "dlib_68_ibug", "tavc": "tavc_tavce"},
                "results": {dataset: {"ground truth": {"lse_d": 1.0},
                                      "ours": {"lse_d": lse_d, "lse_c": 1.0, "abs_offset": 2.0, "fid": fid,
                                               "csim": 0.9, "lmd_mouth": 3.0, "tavc_similarity": 0.1}}}}
    train = {"heldout_motion": {"mouth_l1": {"generated": mouth_l1}}}
    data = {"metrics": {"reports/evaluate/metrics.json": {"data": evaluate},
                        "reports/train/metrics.json": {"data": train}}, "params": {}}
    return {"rev": "abc", "name": name, "data": data}


def _exp_show(records):
    return [{"rev": "workspace", "name": None, "data": {"metrics": {}}, "experiments": None},
            {"rev": "f00", "name": "main", "data": {"metrics": {}},
             "experiments": [{"name": r["name"], "revs": [r]} for r in records]}]


def test_queue_commands_cover_four_variants_per_seed_and_change_only_the_train_switches():
    cmds = ablation.queue_commands([0, 1, 2], 0.1)
    assert len(cmds) == 12 and len({c[5] for c in cmds}) == 12  # unique names
    full = next(c for c in cmds if c[5] == "tableiv-full-s1")
    assert full[:5] == ["dvc", "exp", "run", "--queue", "-n"]
    assert full[6:] == ["-S", "train.cerl.enabled=true", "-S", "train.car.weight=0.1", "-S", "train.seed=1"]
    both = next(c for c in cmds if c[5] == "tableiv-wo_both-s2")
    assert "train.cerl.enabled=false" in both and "train.car.weight=0.0" in both
    assert all(s.startswith("train.") for c in cmds for s in c[7::2])


def test_report_means_intervals_and_ordering_from_exp_show(tmp_path):
    values = {"full": [5.0, 5.2, 5.1], "wo_cerl": [5.5, 5.4, 5.6], "wo_car": [5.3, 5.2, 5.4], "wo_both": [6.0, 6.1, 5.9]}
    records = [_exp(f"tableiv-{v}-s{s}", lse, 10.0 + s, 0.08) for v, xs in values.items() for s, lse in enumerate(xs)]
    records.append(_exp("some-other-exp", 99.0, 99.0, 0.5))  # not part of the ablation
    records.append({"rev": "x", "name": "tableiv-full-s9", "data": {"metrics": {}}})  # failed: no evaluate metrics
    result = ablation.report(tmp_path, _exp_show(records), track=False)
    assert len(result["rows"]) == 12
    s = result["summary"]["synthetic"]
    xs = values["wo_cerl"]
    half = stats.t.ppf(0.975, 2) * stats.tstd(xs) / math.sqrt(3)
    assert s["wo_cerl"]["lse_d"]["mean"] == pytest.approx(sum(xs) / 3)
    assert s["wo_cerl"]["lse_d"]["ci95"] == pytest.approx(half, rel=1e-3)
    assert s["full"]["seeds"] == [0, 1, 2]
    assert all(result["ordering"]["synthetic"]["lse_d"].values())  # the fabricated numbers follow the paper
    table = (tmp_path / "table.md").read_text()
    assert "LSE-D[syncnet_tavce]" in table and "FID[dlib_resnet_v1]" in table and "w/o both" in table
    assert json.loads((tmp_path / "table.json").read_text())["rows"][0]["dataset"] == "synthetic"


def test_report_without_finished_experiments_says_what_to_run(tmp_path):
    with pytest.raises(ablation.AblationError, match="stages.ablation queue"):
        ablation.report(tmp_path, _exp_show([]), track=False)
    assert ablation.mean_interval([1.0])[1] != ablation.mean_interval([1.0])[1]  # nan: one seed has no interval
    assert ablation.main(["report", "--out", str(tmp_path), "--no-track", "--exp-show-json",
                          str(_write(tmp_path / "e.json", _exp_show([]))), ]) == 2


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_baselines_are_the_commits_that_carry_table_iv_experiments():
    listing = "5240cd9:\n\td883b30 [ablate-no-both]\nd875ef8:\n\t90317c6 [tableiv-wo_both-s0]\n\tb3406f6 [tableiv-full-s0]\n"
    assert ablation.baselines_with_experiments(listing) == ["d875ef8"]
    assert ablation.baselines_with_experiments("") == []
