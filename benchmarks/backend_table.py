"""The backend table `functional` reads (env ACT_LORA_BACKEND_TABLE): best of triton / torch per measured shape.

    python benchmarks/backend_table.py --ratios ratios.json --out backend_table.json

`--ratios` is the JSON of `lora_linear_ratios.py --json` (gpu_check.sh's headline). Each shape where both
``ours[triton]`` and ``ours[torch]`` ran gives one entry; the faster median wins. Output format::

    {"format": "act_lora_fast.backend_table/1", "device": str,
     "entries": [{"dtype": "bfloat16", "tokens": int, "in": int, "out": int, "r": int, "best": "triton"|"torch"}]}
"""
import argparse
import json
import os
import sys

FORMAT = "act_lora_fast.backend_table/1"
CANDIDATES = ("triton", "torch")


def build_table(ratios):
    """The table dict from a `lora_linear_ratios.py` record; raises ValueError on a record it cannot read."""
    if not isinstance(ratios, dict) or ratios.get("format") != "act_lora_fast.lora_linear_ratios/1":
        raise ValueError("not a lora_linear_ratios.py record (format act_lora_fast.lora_linear_ratios/1)")
    entries = []
    for row in ratios["shapes"]:
        ms = {b: row["ms"].get(f"ours[{b}]") for b in CANDIDATES}
        if None in ms.values():
            continue
        T, k_in, n_out, r = row["shape"]
        entries.append({"dtype": ratios["dtype"], "tokens": T, "in": k_in, "out": n_out, "r": r,
                        "best": min(CANDIDATES, key=ms.get)})
    return {"format": FORMAT, "device": ratios["device"], "entries": entries}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ratios", required=True, help="lora_linear_ratios.py --json output")
    parser.add_argument("--out", required=True, help="where to write the backend table JSON")
    args = parser.parse_args(argv)
    if not os.path.exists(args.ratios):
        print(f"SUMMARY backend_table FAILED: {args.ratios} does not exist (the headline wrote no measurement)")
        return 1
    with open(args.ratios, encoding="utf-8") as handle:
        table = build_table(json.load(handle))
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(table, handle, indent=2)
        handle.write("\n")
    choices = ", ".join(f"{e['tokens']},{e['in']},{e['out']},{e['r']}->{e['best']}" for e in table["entries"])
    status = "PASS" if table["entries"] else "FAILED (no shape with both backends measured)"
    print(f"SUMMARY backend_table {status}: {len(table['entries'])} entries ({choices}) -> {args.out}")
    return 0 if table["entries"] else 1


if __name__ == "__main__":
    sys.exit(main())
