"""Write a user's own RL task as a Parquet file: one-digit multiplication, with a `split` column for the held-out
rows. Run: python examples/user_task/make_data.py /tmp/times.parquet (needs `datasets` or `pyarrow`)."""

import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq

rng = random.Random(0)
pairs = [(a, b) for a in range(2, 10) for b in range(2, 10)] * 4
rng.shuffle(pairs)
rows = {"question": [], "product": [], "split": []}
for i, (a, b) in enumerate(pairs):
    rows["question"].append(f"What is {a} times {b}? Reply with only the number.")
    rows["product"].append(a * b)
    rows["split"].append("test" if i < 40 else "train")
pq.write_table(pa.table(rows), sys.argv[1] if len(sys.argv) > 1 else "times.parquet")
