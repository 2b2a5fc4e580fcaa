"""One table from the JSON reports of `promptcast bench --arch ... --json` (bench/gpu.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    print("| run | arch | px | steps | mode/tuning/scope | batch | ms/batch | frames/s | UNet ms/step "
          "| decode ms | JPEG ms (CPU / nvJPEG) | I420 ms (CPU / device) | keystroke ms (text) "
          "| img2img ms | syncs/frame | warm-up s | stock ms | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        r = json.loads(Path(path).read_text())
        for b in r["batches"]:
            first = b["batch"] == min(x["batch"] for x in r["batches"])
            stock = f"{r['stock_frame_ms']:.2f}" if first and r["stock_frame_ms"] else ""
            speed_up = f"{r['speed_up']:.2f}x" if first and r["speed_up"] else ""
            # engine_encode_ms: JPEG in the engine (nvJPEG); gpu_encode_ms in the first run's files
            on_gpu = b.get("engine_encode_ms", b.get("gpu_encode_ms"))
            nvjpeg = f"{on_gpu:.2f}" if on_gpu is not None else "-"
            mode = f"{r['mode']}/{r.get('tuning', 'off')}/{r.get('scope', 'whole')}"
            if r.get("fallbacks"):  # calls that ran in a lesser mode: the figures are not mode's
                mode += f" (fallback: {', '.join(r['fallbacks'])})"
            name = Path(path).stem + ("" if r.get("complete", True) else " (cut off)")
            syncs = r.get("host_syncs")  # not in the first run's files
            # I420 for video and img2img: not in files before 2026-11-27's second session
            i420 = (f"{b['video_cpu_ms']:.2f} / {b['video_device_ms']:.3f}" if "video_cpu_ms" in b
                    else "-")
            img2img = r.get("img2img_ms")
            print(f"| {name} | {r['arch']} | {r['resolution']} | {r['steps']} | {mode} "
                  f"| {b['batch']} | {b['frame_ms']:.2f} | {b['fps']:.1f} | {b['unet_step_ms']:.2f} "
                  f"| {b['stages_ms']['decode_ms']:.2f} | {b['encode_ms']:.2f} / {nvjpeg} | {i420} "
                  f"| {r['keystroke_to_frame_ms']:.2f} ({r.get('text_miss_ms', 0.0):.2f}) "
                  f"| {'-' if img2img is None else f'{img2img:.2f}'} "
                  f"| {'-' if syncs is None else syncs} | {r['warm_up_s']:.1f} | {stock} | {speed_up} |")


if __name__ == "__main__":
    main(sys.argv[1:])
