"""Compiles a config's train step for a TPU slice ahead of time, on this (CPU-only) host.

    python tools/compile_tpu.py --config configs/qwen3_8b.py:dagger --topology v5p:2x2x4 \
        [--config.train.seq_len=8192 ...] [--out report.json]

Needs libtpu (`pip install -e '.[tpu]'`; the test extra has it too). The step compiled is the one
the trainer runs (dagger_jax/train/step_program.py) on the slice's devices, with the config's
mesh, dtypes, remat and attention. Prints one line per figure and the whole report as JSON
(to --out, or as the last line of stdout): chips, hosts, mesh, per-device bytes, whether they fit
the chip's HBM, model FLOPs against the program's matmul FLOPs, and the roofline step time and tokens/s
at the chip's peak bf16 rate. Exits 1 when the step does not fit, 2 on a layout it refuses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from dagger_jax.settings import model_and_train_settings
from dagger_jax.train.tpu_compile import compile_for_tpu

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config).",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:2x2x4, v5e:8x8, v6e:4x4")
_OUT = flags.DEFINE_string("out", "", "Write the JSON report here (default: last line of stdout).")
flags.mark_flags_as_required(["config", "topology"])

GiB = 1024**3


def summary(report: dict) -> list[str]:
    lines = [f"{report['topology']}: {report['chips']} chips, {report['devices']} devices, "
             f"{report['hosts']} hosts, mesh {report['mesh']}, the hosts feed "
             f"{report['row_blocks']} blocks of rows",
             f"batch {report['batch']['rows']} x {report['batch']['seq_len']}, "
             f"{report['dtype']} compute / {report['param_dtype']} params, remat "
             f"{report['remat']}, attention {report['attention']}"]
    hbm = report["hbm_bytes_per_device"] / GiB
    if "per_device_bytes" in report:
        b = {k: v / GiB for k, v in report["per_device_bytes"].items()}
        lines.append(f"per device: {b['total']:.2f} GiB of {hbm:.2f} GiB HBM "
                     f"({'fits' if report['fits'] else 'DOES NOT FIT'}, "
                     f"{report['hbm_spare_fraction']:.0%} spare): arguments {b['arguments']:.2f}, "
                     f"outputs {b['outputs']:.2f}, aliased {b['aliased']:.2f}, temporaries "
                     f"{b['temporaries']:.2f}, code {b['generated_code']:.2f} GiB"
                     + (f"; host {b['host_temporaries']:.2f} GiB" if b["host_temporaries"] else ""))
    else:
        need = report.get("temporaries_bytes_per_device")
        lines.append(f"per device: DOES NOT FIT {hbm:.2f} GiB HBM"
                     + (f" (temporaries alone {need / GiB:.2f} GiB)" if need else "")
                     + f": {report['error'].splitlines()[0][:300]}")
    lines.append(f"model FLOPs per step {report['model_flops_per_step']:.3e} "
                 f"({report['model_flops_attention_fraction']:.0%} attention)"
                 + f", the program's matmuls {report['program_matmul_flops_per_step']:.3e} "
                 f"(model / program {report['model_over_program_flops']:.2f})")
    lines.append(f"roofline at {report['peak_bf16_flops_per_chip'] / 1e12:.0f} TFLOP/s per chip: "
                 f"step {report['roofline_step_s']:.2f} s, {report['roofline_tokens_per_s']:,.0f} "
                 f"tokens/s ({report['roofline_tokens_per_s_per_chip']:,.0f} per chip)")
    lines.append(f"compiled in {report['compile_s']:.1f} s")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        model, train = model_and_train_settings(_CONFIG.value)
        report = compile_for_tpu(train, model, _TOPOLOGY.value)
    except ValueError as e:
        print(f"compile_tpu: {e}", file=sys.stderr)
        return 2
    report["config"] = config_flags.get_config_filename(flags.FLAGS["config"])
    for line in summary(report):
        print(line)
    text = json.dumps(report, sort_keys=True)
    if _OUT.value:
        Path(_OUT.value).write_text(text + "\n")
    else:
        print(text)
    return 0 if report["fits"] else 1


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
