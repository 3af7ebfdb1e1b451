"""The benchmark's run summaries (no timing: synthetic rows)."""

import pytest

from benchmarks import user_path


def _run(ms, nfe):
  rows = [{"step": i, "wall_ms": m, "nfe_fwd": f, "nfe_bwd": b}
          for i, (m, (f, b)) in enumerate(zip(ms, nfe))]
  return {"rows": rows}


def test_run_windows_split_the_run_after_its_first_step():
  # 9 steps: step 0 (tracing) is left out, steps 1-8 make 4 windows of 2.
  ours = _run([900, 1, 3, 2, 2, 4, 6, 10, 10], [(20, 7)] * 6 + [(26, 13)] * 3)
  tfp = _run([999, 4, 4, 4, 4, 8, 8, 20, 20], [(25, 26)] * 9)
  windows = user_path.run_windows({"ours": ours, "tfp": tfp}, parts=4)
  assert [w["steps"] for w in windows] == [[1, 2], [3, 4], [5, 6], [7, 8]]
  assert [w["ours"]["step_ms"] for w in windows] == [2, 2, 5, 10]
  assert [w["ours"]["total_s"] for w in windows] == pytest.approx(
      [0.004, 0.004, 0.010, 0.020])
  assert [w["ours"]["time_vs_tfp"] for w in windows] == pytest.approx(
      [0.5, 0.5, 10 / 16, 0.5])
  assert windows[2]["ours"]["nfe"] == [23, 10]  # medians of (20,7), (26,13)
  assert all(w["tfp"]["time_vs_tfp"] == 1 for w in windows)
  table = user_path.format_windows({"ours": ours, "tfp": tfp}, parts=4)
  assert "| 5-6 | ours | 5 | 0 | 0.62 | 23+10 |" in table


def test_run_windows_use_the_shorter_run():
  a = _run([1] * 9, [(1, 1)] * 9)
  b = _run([1] * 5, [(1, 1)] * 5)
  assert user_path.run_windows({"a": a, "b": b}, parts=2)[-1]["steps"] == [3, 4]


def _serve_run(first_requests):
  return {"parts": [{"part": "serve", "model": "toy", "import_s": 4.0,
                     "load_s": 1.0, "first_batch": [first, 0.01],
                     "second_batch": [0.02, 0.005]}
                    for first in first_requests]}


def test_before_after_takes_the_median_of_the_rounds_and_their_ratio():
  from benchmarks import before_after  # pylint: disable=g-import-not-at-top
  results = {"before": {"commit": "aaa", "runs": [_serve_run([1.0]),
                                                  _serve_run([3.0]),
                                                  _serve_run([2.0])]},
             "after": {"commit": "bbb", "runs": [_serve_run([1.0]),
                                                 _serve_run([1.0]),
                                                 _serve_run([9.0])]}}
  table = before_after.format_table(results).splitlines()
  assert "before aaa" in table[0] and "after bbb" in table[0]
  row = next(line for line in table if "| first request |" in line)
  assert row == "| toy | serve | first request | 2.000 | 1.000 | 0.50 |"
  load = next(line for line in table if "| load |" in line)
  assert load.endswith("| 1.000 | 1.000 | 1.00 |")
