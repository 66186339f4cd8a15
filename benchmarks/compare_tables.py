"""Print the Markdown tables of one or more compare.json files (partial ones too) and their average.

    PYTHONPATH=. python benchmarks/compare_tables.py benchmarks/results/compare/{sst2,mrpc,stsb}/compare.json

The average keeps only tasks where all-layer LoRA is significantly above chance, pairs by seed, and uses the
seeds every task has finished.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # this checkout first

from act_lora_fast.train.compare import format_table, load_compare, summarize


def main(paths):
    results = [load_compare(p) for p in paths]
    for result in results:
        done = f"{result.meta.get('completed_runs')}/{result.meta.get('planned_runs')} runs, {result.meta.get('status')}"
        print(result.markdown().replace(f"### {result.task} (", f"### {result.task} [{done}] (", 1))
        print()
    if len(results) > 1:
        try:
            average = summarize(results)
        except ValueError as err:
            print(f"(no average: {err})")
        else:
            print(format_table(average.rows, title=average.task))
            print(f"\nseeds in the average: {average.rows[0]['seeds']}")


if __name__ == "__main__":
    main(sys.argv[1:])
