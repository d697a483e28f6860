"""Rebuild the embedded default data set from the shared Oxford pets parquet.

Every photo is re-encoded as JPEG (quality 95, no chroma subsampling; about 40 dB PSNR
against the PNG original) and written as parquet shards in the Hugging Face schema
(`image`, `label`, `dog`, `path`), each under 5 MB, so the package stays under 30 MB.

    python scripts/make_embedded_data.py ../shared/data/oxford-pets-64.parquet
"""

import io
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from PIL import Image

SHARDS = 6
OUT = Path(__file__).resolve().parents[1] / "src" / "latentflows" / "embedded"


def main(source: str) -> None:
    table = pq.read_table(source, columns=["image", "label", "dog", "path"])
    rows = table.to_pylist()
    images = []
    for row in rows:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB").save(buffer, "JPEG", quality=95, subsampling=0)
        images.append({"bytes": buffer.getvalue(), "path": row["path"]})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string"),
                                  "dog": datasets.Value("bool"), "path": datasets.Value("string")})
    data = datasets.Dataset.from_dict(
        {"image": images, "label": [r["label"] for r in rows], "dog": [r["dog"] for r in rows],
         "path": [r["path"] for r in rows]}, features=features)
    for old in OUT.glob("*.parquet"):
        old.unlink()
    for i in range(SHARDS):
        data.shard(SHARDS, i, contiguous=True).to_parquet(OUT / f"oxford-pets-64-{i:05d}-of-{SHARDS:05d}.parquet")
    print(f"wrote {len(data)} images to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/oxford-pets-64.parquet")
