"""Data-loading throughput: samples/s for each reader, with baselines measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py [--samples 2000] [--image-size 64]

Prints one line per measurement:

* ``shapes``: ShapesDataset rendering on the fly (cache off) vs. cached;
* ``folder``: ImageTextFolder (PNG files + JSONL index) — the baseline for WebDataset;
* ``webdataset``: WebDatasetReader over tar shards of the same PNGs (0 and 2 loader workers);
* ``raw+encode``: Shapes images encoded by an image tokenizer per batch — the baseline for code shards;
* ``code shards``: CodeShardDataset (codes and ids already computed).
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from vilgkit.data import CodeShardDataset, ImageTextFolder, ShapesDataset, WebDatasetReader, collate, write_code_shards


def rate(loader, n: int) -> float:
    """Samples per second to iterate ``loader`` until ``n`` samples were seen."""
    seen, start = 0, time.perf_counter()
    for batch in loader:
        seen += len(batch["caption"])
        if seen >= n:
            break
    return seen / (time.perf_counter() - start)


def image_tokenizer():
    """The tiny VQVAE of the tokenizer plugin if present (a realistic encode cost), else average pooling."""
    try:
        import vilgkit_vq

        return vilgkit_vq.VQVAETokenizer(codebook_size=512, code_dim=32, downsample=8, hidden=32).eval()
    except Exception:  # pragma: no cover - fallback when the plugin is missing
        from vilgkit.interfaces import ImageTokenizer

        class Pool(ImageTokenizer):
            codebook_size, downsample, code_dim = 512, 8, 3

            def encode(self, images):
                pooled = torch.nn.functional.avg_pool2d(images, 8)
                return ((pooled.mean(1) + 1) * 255).long().clamp(0, 511)

            decode = embed = decode_embedding = loss = None

        return Pool()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    n, size, bs = args.samples, args.image_size, args.batch_size
    torch.set_num_threads(1)
    results = {}

    def report(name: str, value: float) -> None:
        results[name] = round(value, 1)
        print(f"{name:<40s} {value:10.1f} samples/s", flush=True)

    shapes = ShapesDataset(size=n, image_size=size, cache_mb=0)
    report(f"shapes {size}px render (no cache)", rate(DataLoader(shapes, batch_size=bs, collate_fn=collate), n))
    cached = ShapesDataset(size=n, image_size=size, cache_mb=1024)
    rate(DataLoader(cached, batch_size=bs, collate_fn=collate), n)  # fill the cache
    report(f"shapes {size}px cached", rate(DataLoader(cached, batch_size=bs, collate_fn=collate), n))

    import webdataset as wds

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "shards").mkdir()
        rows, per_shard = [], 500
        writer = None
        for i in range(n):
            if i % per_shard == 0:
                if writer is not None:
                    writer.close()
                writer = wds.TarWriter(str(root / "shards" / f"{i // per_shard:05d}.tar"))
            buf = io.BytesIO()
            Image.fromarray(shapes.render(i)).save(buf, "PNG")
            caption = shapes.describe(i)["caption"]
            (root / "images" / f"{i}.png").write_bytes(buf.getvalue())
            rows.append(json.dumps({"image": f"images/{i}.png", "caption": caption}))
            writer.write({"__key__": f"{i:06d}", "png": buf.getvalue(), "txt": caption})
        writer.close()
        (root / "index.jsonl").write_text("\n".join(rows) + "\n")

        folder = ImageTextFolder(str(root / "index.jsonl"), image_size=size)
        report("folder (PNG + JSONL) baseline", rate(DataLoader(folder, batch_size=bs, collate_fn=collate), n))
        reader = WebDatasetReader(str(root / "shards"), image_size=size)
        report("webdataset shards, 0 workers", rate(DataLoader(reader, batch_size=bs, collate_fn=collate), n))
        reader = WebDatasetReader(str(root / "shards"), image_size=size)
        report(
            "webdataset shards, 2 workers",
            rate(DataLoader(reader, batch_size=bs, collate_fn=collate, num_workers=2), n),
        )

        tok = image_tokenizer()
        from vilgkit_text import WordPieceTokenizer

        text = WordPieceTokenizer(vocab_size=400, corpus=list(shapes.iter_texts(300)))

        def encode_on_the_fly():
            seen, start = 0, time.perf_counter()
            with torch.no_grad():
                for batch in DataLoader(shapes, batch_size=bs, collate_fn=collate):
                    tok.encode(batch["image"])
                    text.encode(batch["caption"])
                    seen += len(batch["caption"])
            return seen / (time.perf_counter() - start)

        report(f"raw+encode baseline ({type(tok).__name__})", encode_on_the_fly())
        start = time.perf_counter()
        write_code_shards(shapes, tok, text, root / "codes", shard_size=1024, batch_size=bs, progress=False)
        report("tokenize (write code shards)", n / (time.perf_counter() - start))
        codes = CodeShardDataset(str(root / "codes"))
        report("code shards read", rate(DataLoader(codes, batch_size=bs, collate_fn=collate), n))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
