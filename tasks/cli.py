"""The command line every task shares: LightningCLI with Kestrel's links, checkpointing and shortcuts."""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI


class KestrelCLI(LightningCLI):
    """LightningCLI with data properties linked to the model, and checkpoints on a validation metric.

    ``ModelCheckpoint`` (``checkpoint.*``) keeps ``best.ckpt`` by ``monitor`` and ``last.ckpt``.
    ``validate``, ``test`` and ``predict`` accept ``--ckpt_path best`` or ``last``: the newest such
    file under ``trainer.default_root_dir``'s runs.

    Args:
        model_class: The task's LightningModule.
        datamodule_class: Its LightningDataModule.
        monitor: Validation metric to keep the best checkpoint by (higher is better).
        links: Data-module attributes that are model arguments: ``{"data.x": "model.y"}``
            (``data.num_classes`` -> ``model.num_classes`` by default).
        args: Command-line arguments; ``sys.argv`` if None.
    """

    def __init__(self, model_class, datamodule_class, monitor: str, links: dict[str, str] | None = None,
                 args: list[str] | None = None):
        self.monitor = monitor
        self.links = links if links is not None else {"data.num_classes": "model.num_classes"}
        super().__init__(
            model_class,
            datamodule_class,
            args=args,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
        )

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

    def _resolve_ckpt_path(self) -> None:
        kwargs = self.config_init[self.subcommand]
        name = kwargs.get("ckpt_path")
        if name not in ("best", "last"):
            return
        root = Path(self.trainer.default_root_dir)
        found = sorted(root.glob(f"**/checkpoints/{name}.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(
                f"--ckpt_path {name}: no {name}.ckpt under {root.resolve()}; train first (fit) or give a path"
            )
        kwargs["ckpt_path"] = str(found[-1])
        print(f"Using checkpoint {found[-1]}")

    def before_validate(self) -> None:
        self._resolve_ckpt_path()

    def before_test(self) -> None:
        self._resolve_ckpt_path()

    def before_predict(self) -> None:
        self._resolve_ckpt_path()
