"""Real MNIST, when its folder is there (the folder AELIGHT_REAL_DATA names, which holds MNIST/raw)."""

import pytest

from aelight.run.trainer_cli import build_cli
from tests.conftest import REAL_DATA

needs_mnist = pytest.mark.skipif(
    not (REAL_DATA / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists(), reason=f"no real MNIST at {REAL_DATA}"
)


@needs_mnist
def test_default_ae_one_epoch_reaches_test_mse_below_003(tmp_path):
    cli = build_cli(
        [
            "--config=configs/ae.yaml",
            f"--data.data_dir={REAL_DATA}",
            "--data.download=false",
            "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", weights_only=True)
    assert len(cli.datamodule.splits["train"]) == 55_000 and len(cli.datamodule.splits["test"]) == 10_000
    assert results["test/mse"] < 0.03
    assert results["test/psnr"] > 15
