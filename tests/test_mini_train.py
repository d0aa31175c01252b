"""The `mini` trainer end to end, on a budget of a few steps: its output is a model the app can load and run."""

import torch

from pacgen.layout import Box
from pacgen.mini.train import main
from pacgen.models import load_components
from pacgen.sampling import PACGenPipeline


def test_trainer_writes_a_loadable_model(tmp_path):
    threads = torch.get_num_threads()
    try:
        folder = main([
            "--out", str(tmp_path / "mini"), "--work", str(tmp_path / "work"), "--scenes", "16", "--batch", "4",
            "--vae-steps", "2", "--unet-steps", "2", "--threads", "1", "--size", "32",
        ])
    finally:
        torch.set_num_threads(threads)
    assert (folder / "TRAINING.md").is_file()
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 40e6
    components = load_components(str(folder), device="cpu")
    assert components.unet.dtype == torch.float32 and components.default_size == 32
    result = PACGenPipeline(components)("a red star on grass", boxes=[Box("a red star", (0.1, 0.1, 0.6, 0.6))],
                                        num_inference_steps=2, seed=0)
    assert result.images[0].size == (32, 32)
