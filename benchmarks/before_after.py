"""Two checkouts side by side: the latency benchmark run from each, interleaved, in one invocation.

    git worktree add ../before <commit>
    taskset -c 0 python -m benchmarks.before_after --before ../before \\
        --after . --rounds 3 --out benchmarks/results/before_after.json \\
        -- --models toy,miniboone --steps 30
    python -m benchmarks.before_after --table benchmarks/results/before_after.json

Each round runs `python -m benchmarks.latency` (every part in its own fresh
process, see that module) once from the `--before` checkout and once from
the `--after` one, alternating which goes first, so that a drift of the
machine's speed lands on both. Everything after `--` goes to
`benchmarks.latency` unchanged. Each checkout runs its own code, its own
copy of the benchmark included: the figures compare what a user of each
commit would see. The table gives the median over the rounds of every
measure and the ratio after / before.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks import add_table_option, latency, printed_table

__all__ = ["run_rounds", "format_table", "main"]


def _commit(checkout):
  return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout,
                        capture_output=True, text=True,
                        check=False).stdout.strip()


def _run(checkout, args, log):
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "latency.json")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    cmd = [sys.executable, "-m", "benchmarks.latency", *args, "--out", out]
    log(f"+ (cd {checkout} && python {' '.join(cmd[1:])})")
    subprocess.run(cmd, cwd=checkout, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    with open(out) as f:
      return json.load(f)


def run_rounds(before, after, rounds, latency_args, log=print):
  """Runs the latency benchmark `rounds` times from each checkout."""
  results = {"before": {"checkout": before, "commit": _commit(before),
                        "runs": []},
             "after": {"checkout": after, "commit": _commit(after),
                       "runs": []},
             "latency_args": latency_args,
             "affinity": sorted(os.sched_getaffinity(0)),
             "load_avg_start": os.getloadavg()}
  for r in range(rounds):
    order = ("before", "after") if r % 2 == 0 else ("after", "before")
    for side in order:
      results[side]["runs"].append(
          _run(results[side]["checkout"], latency_args, log))
  results["load_avg_end"] = os.getloadavg()
  return results


def _medians(runs):
  values = {}
  for run in runs:
    for row in run["parts"]:
      for measure, v in latency.measures(row):
        values.setdefault((row["model"], row["part"], measure), []).append(v)
  return {k: statistics.median(v) for k, v in values.items()}


def format_table(results):
  """Markdown: every measure's median before and after, and their ratio."""
  before = _medians(results["before"]["runs"])
  after = _medians(results["after"]["runs"])
  lines = [f"| model | part | measure | before {results['before']['commit']}"
           f" (s) | after {results['after']['commit']} (s) | after / before "
           "|", "| --- | --- | --- | --- | --- | --- |"]
  for key in before:
    if key not in after:
      continue
    b, a = before[key], after[key]
    ratio = f"{a / b:.2f}" if b > 0 else ""
    lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {b:.3f} | {a:.3f} | "
                 f"{ratio} |")
  return "\n".join(lines)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  rest = []
  if "--" in argv:
    rest = argv[argv.index("--") + 1:]
    argv = argv[:argv.index("--")]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--before", help="checkout of the earlier commit")
  parser.add_argument("--after", default=".", help="checkout of the later one")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", default="benchmarks/results/before_after.json")
  add_table_option(parser)
  args = parser.parse_args(argv)
  if printed_table(args, format_table):
    return
  if not args.before:
    parser.error("--before is required (a checkout of the earlier commit)")
  if args.rounds < 1:
    parser.error("--rounds must be at least 1")
  results = run_rounds(args.before, args.after, args.rounds, rest)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  print(format_table(results))


if __name__ == "__main__":
  main()
