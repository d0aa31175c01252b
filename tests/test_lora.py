"""LoRA files and their factors, without training: extraction of a weight change and re-truncation."""

import torch

from pacgen import lora


def test_a_stored_change_truncates_to_its_best_low_rank_approximation():
    generator = torch.Generator().manual_seed(0)
    linear = torch.randn(12, 8, generator=generator) @ torch.randn(8, 20, generator=generator)  # rank 8
    conv = torch.randn(6, 3, 3, 3, generator=generator)
    layers = {"a.to_q": torch.nn.Linear(20, 12, bias=False), "b.conv1": torch.nn.Conv2d(3, 6, 3, bias=False)}
    original = lora.snapshot(layers)
    with torch.no_grad():
        layers["a.to_q"].weight.add_(linear)
        layers["b.conv1"].weight.add_(conv)
    exact, dropped = lora.extract_lora(layers, original, rank=64)
    assert dropped < 1e-10
    product = exact["a.to_q.lora_B.weight"] @ exact["a.to_q.lora_A.weight"]
    assert torch.allclose(product, linear, atol=1e-4)
    conv_product = exact["b.conv1.lora_B.weight"].flatten(1) @ exact["b.conv1.lora_A.weight"].flatten(1)
    assert torch.allclose(conv_product.reshape(conv.shape), conv, atol=1e-4)
    small = lora.truncate_lora(exact, 2)
    assert small["a.to_q.lora_A.weight"].shape == (2, 20) and small["b.conv1.lora_A.weight"].shape == (2, 3, 3, 3)
    direct, _ = lora.extract_lora(layers, original, rank=2)
    for key in small:  # truncating the stored change = storing the change at that rank
        a, b = key.replace("lora_B", "lora_A"), key.replace("lora_A", "lora_B")
        assert torch.allclose(small[b].flatten(1) @ small[a].flatten(1), direct[b].flatten(1) @ direct[a].flatten(1),
                              atol=1e-4)


def test_a_saved_adapter_trained_at_alpha_other_than_rank_reloads_with_its_scale(tmp_path):
    """alpha 8 on rank 4 acts at scale 2: the saved file (which diffusers loads at scale 1) must carry that scale, or
    a concept trained so would draw differently once reloaded than in its training previews."""
    from pacgen.models import load_components

    unet = load_components("tiny", device="cpu").unet
    lora.add_adapter(unet, "trained", rank=4, alpha=8)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora.lora_layers(unet):
            layer.lora_B["trained"].weight.copy_(torch.randn(layer.lora_B["trained"].weight.shape,
                                                             generator=generator) * 0.3)
    latents = torch.randn(1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size,
                          generator=generator)
    text = torch.randn(1, 8, unet.config.cross_attention_dim, generator=generator)

    def predict(names: list[str]) -> torch.Tensor:
        lora.activate(unet, names)
        with torch.no_grad():
            return unet(latents, torch.tensor([500]), encoder_hidden_states=text).sample

    base, live = predict([]), predict(["trained"])
    lora.save_adapter(unet, "trained", tmp_path)
    lora.load_adapter(unet, lora.read_lora_file(tmp_path / lora.LORA_FILE), "reloaded")
    assert (live - base).abs().max() > 1e-2  # the adapter really changes the prediction
    torch.testing.assert_close(predict(["reloaded"]), live, atol=1e-5, rtol=1e-5)
