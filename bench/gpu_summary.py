"""One table from the JSON reports of `promptcast bench --arch ... --json` (bench/gpu.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _ms(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(paths: list[str]) -> None:
    print("| run | arch | px | steps | mode/tuning/scope | batch | ms/batch | frames/s | UNet ms/step "
          "| decode ms | JPEG ms (CPU / nvJPEG) | I420 ms (CPU / device) | keystroke ms (text) "
          "| img2img ms | syncs/frame (JPEG / video) | warm-up s (tracing / inductor) | stock ms "
          "| speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        r = json.loads(Path(path).read_text())
        mode = f"{r['mode']}/{r['tuning']}/{r['scope']}"
        if r["fallbacks"]:  # calls that ran in a lesser mode: the figures are not mode's
            mode += f" (fallback: {', '.join(r['fallbacks'])})"
        name = Path(path).stem + ("" if r["complete"] else " (cut off)")
        warm_up = f"{r['warm_up_s']:.1f}"
        if r.get("compile_s") and r.get("compile_backend_s") is not None:
            warm_up += f" ({r['compile_s'] - r['compile_backend_s']:.1f} / {r['compile_backend_s']:.1f})"
        for b in r["batches"]:
            keystroke = ("-" if b["keystroke_ms"] is None
                         else f"{b['keystroke_ms']:.2f} ({b['text_miss_ms']:.2f})")
            syncs = "-" if b["host_syncs"] is None else f"{b['host_syncs']} / {b['host_syncs_video']}"
            speed_up = "" if b["speed_up"] is None else f"{b['speed_up']:.2f}x"
            print(f"| {name} | {r['arch']} | {r['resolution']} | {b['steps']} | {mode} "
                  f"| {b['batch']} | {b['frame_ms']:.2f} | {b['fps']:.1f} | {b['unet_step_ms']:.2f} "
                  f"| {b['stages_ms']['decode_ms']:.2f} "
                  f"| {b['encode_ms']:.2f} / {_ms(b['engine_encode_ms'])} "
                  f"| {b['video_cpu_ms']:.2f} / {b['video_device_ms']:.3f} | {keystroke} "
                  f"| {_ms(b['img2img_ms'])} | {syncs} "
                  f"| {warm_up} | {_ms(b['stock_ms'])} "
                  f"| {speed_up} |")


if __name__ == "__main__":
    main(sys.argv[1:])
