"""Speed and accuracy, measured side by side on this machine: ``python -m tasks.benchmark``.

For the configs asked for (the three demo models and the COCO configs' models by default): every
network in every form — PyTorch eager, ONNX Runtime float and INT8, OpenVINO float and INT8, and for
detection torchvision's own pipeline on the same weights — beside torchvision's
``ssdlite320_mobilenet_v3_large``, ``deeplabv3_mobilenet_v3_large`` and ``lraspp_mobilenet_v3_large``,
all timed in one run with the models taking turns: parameters, GFLOPs, file size, batch-1 latency
and batch-8 throughput (median and spread), each form's ratio to torchvision's, how closely each
form's outputs follow eager PyTorch's, and with a checkpoint and the config's data, each form's
accuracy by the task's own evaluator (the numbers ``test`` gives). Writes ``benchmark.md``,
``benchmark.json`` and ``pareto.png`` and prints the machine (CPU, its int8 instructions, threads,
library versions, date) with the table.

``--grid``: SSDLite on MobileNetV2 and V3 over width multiplier x input resolution (``grid``).
``training``: loader, bare torchvision loop and ``fit`` images per second (``training``).
``runtimes CKPT FILES...``: one checkpoint beside its exported files.
``quantization``: fp32 against post-training and QAT INT8 accuracy per backbone.
``pick``: the backbones that fit a latency budget with a task's head (also ``python -m backbones pick``).
"""

from .grid import grid
from .machine import describe_machine, machine_line
from .run import DEFAULT_CONFIGS, DEMO_CONFIGS, run
from .training import training

__all__ = ["DEFAULT_CONFIGS", "DEMO_CONFIGS", "describe_machine", "grid", "machine_line", "run", "training"]
