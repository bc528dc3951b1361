"""The command line every task shares: LightningCLI with Kestrel's links, checkpointing, shortcuts and ``export``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from .quantize import DEFAULT_KEEP_FLOAT, Calibration, KeepFloat
from .runtime import is_exported


class KestrelTrainer(pl.Trainer):
    """Lightning's Trainer with one more entry point, :meth:`export` (``python -m tasks.<task> export``)."""

    def export(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        format: Literal["onnx", "openvino"] = "onnx",
        int8: bool = False,
        output: str | None = None,
        calibration_images: int = 64,
        int8_calibration: Calibration = "percentile",
        int8_float: list[KeepFloat] = list(DEFAULT_KEEP_FLOAT),  # noqa: B006 - jsonargparse reads the default
    ) -> Path:
        """Export the network with its pre- and post-processing, check it against PyTorch, print its path.

        Args:
            model: The task, with ``init_from`` weights if its config names them.
            datamodule: The data: its validation images check the export, its training images
                calibrate INT8.
            ckpt_path: The checkpoint to export (``best``, ``last`` or a path); the model's own weights if None.
            format: ``onnx`` (ONNX Runtime) or ``openvino`` (OpenVINO IR, ``.xml`` + ``.bin``).
            int8: Quantize to INT8 (static, calibrated on training images).
            output: Where to write (default: the run's ``export/`` folder).
            calibration_images: Training images INT8 calibrates on.
            int8_calibration: How INT8 sets activation ranges: ``percentile`` or ``minmax``.
            int8_float: Convolutions INT8 keeps in float: ``first_conv``, ``last_convs``.
        """
        from .export import export_task

        model.trainer = self  # as fit and test connect them: the task may read its data module
        self._data_connector.attach_datamodule(model, datamodule=datamodule)
        return export_task(self, model, datamodule, ckpt_path, format, int8, output, calibration_images,
                           int8_calibration, int8_float)


class KestrelCLI(LightningCLI):
    """LightningCLI with data properties linked to the model, and checkpoints on a validation metric.

    ``ModelCheckpoint`` (``checkpoint.*``) keeps ``best.ckpt`` by ``monitor`` and ``last.ckpt``.
    ``validate``, ``test``, ``predict`` and ``export`` accept ``--ckpt_path best`` or ``last``: the newest
    such file under ``trainer.default_root_dir``'s runs; ``validate``, ``test`` and ``predict`` also take
    an exported file (``.onnx``, OpenVINO ``.xml``) and run it in its runtime.

    Args:
        model_class: The task's LightningModule.
        datamodule_class: Its LightningDataModule.
        monitor: Validation metric to keep the best checkpoint by (higher is better).
        links: Data-module attributes that are model arguments: ``{"data.x": "model.y"}``.
        args: Command-line arguments; ``sys.argv`` if None.
    """

    def __init__(self, model_class, datamodule_class, monitor: str, links: dict[str, str],
                 args: list[str] | None = None):
        self.monitor = monitor
        self.links = links
        super().__init__(
            model_class,
            datamodule_class,
            trainer_class=KestrelTrainer,
            args=args,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        for source, target in self.links.items():
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": self.monitor,
            "checkpoint.mode": "max",
            "checkpoint.filename": "best",
            "checkpoint.save_last": True,
            "checkpoint.auto_insert_metric_name": False,
        })

    def _parse_ckpt_path(self) -> None:
        """Resolve ``best`` / ``last`` first, so that their hyperparameters are read as a path's are; an
        exported file has none to read."""
        subcommand = self.config.get("subcommand")
        if subcommand in ("validate", "test", "predict", "export"):
            config = self.config[subcommand]
            name = config.get("ckpt_path")
            if name in ("best", "last"):
                config.ckpt_path = str(find_checkpoint(name, config.trainer.default_root_dir))
                print(f"Using checkpoint {config.ckpt_path}")
            if is_exported(config.ckpt_path):
                if subcommand == "export":
                    raise ValueError(f"--ckpt_path {config.ckpt_path} is already exported; export a checkpoint")
                return
        super()._parse_ckpt_path()

    def _run_exported(self) -> None:
        kwargs = self.config_init[self.subcommand]
        if is_exported(kwargs.get("ckpt_path")):
            self.model.use_exported(kwargs["ckpt_path"])
            kwargs["ckpt_path"] = None

    def before_validate(self) -> None:
        self._run_exported()

    def before_test(self) -> None:
        self._run_exported()

    def before_predict(self) -> None:
        self._run_exported()


def find_checkpoint(name: str, root: str | Path) -> Path:
    """The newest ``{name}.ckpt`` (``best`` or ``last``) under ``root``'s runs."""
    root = Path(root)
    found = sorted(root.glob(f"**/checkpoints/{name}.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"--ckpt_path {name}: no {name}.ckpt under {root.resolve()}; train first (fit) or give a path"
        )
    return found[-1]
