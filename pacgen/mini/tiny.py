"""`tiny`: random weights built in code from a fixed seed, identical in every process: the unit tests' model.

Also the toy tokenizer and text encoder that `tiny` and `mini` share: a real CLIP BPE tokenizer over a small
vocabulary (no download), so the text path is the real one.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pacgen.bases import sd1
from pacgen.defaults import Example, ModelDefaults
from pacgen.grounding import gligen
from pacgen.layout import Box
from pacgen.models import Components
from pacgen.settings import TrainSettings
from pacgen.training import IDENTIFIER_CANDIDATES

# Words the toy tokenizer keeps whole: scene vocabulary of `mini`'s world plus common prompt words.
TOY_WORDS = (
    "a an the of and on in at with near photo picture image far away very small close up zoomed "
    "grass sand sky night red blue yellow green purple orange white black pink "
    "circle square triangle star cross diamond heart plain striped dotted checkered "
    "dog cat ball toy cup shoe object thing"
).split() + list(IDENTIFIER_CANDIDATES)

# tiny's defaults: trainings that finish in seconds, examples in the toy vocabulary, and a banner saying why every
# image is noise.
TINY_DEFAULTS = ModelDefaults(
    training=TrainSettings(steps=200, learning_rate=1e-3, num_class_images=20, preview_every=50),
    banner="Test model `tiny`: random weights, so every image is noise; the controls all work.",
    examples=(
        Example("a red star and a blue circle on grass", (Box("a red star", (0.05, 0.1, 0.45, 0.5)),
                                                         Box("a blue circle", (0.55, 0.5, 0.95, 0.9)))),
    ),
)

def build_toy_tokenizer(words: list[str] | tuple[str, ...] = TOY_WORDS) -> CLIPTokenizer:
    """A real CLIP BPE tokenizer over a small vocabulary: bytes, plus merges that make each listed word one token.

    Any text still tokenizes (unlisted words fall back to characters). Merges are added per word, then
    words that earlier merges split (BPE applies merges by rank, so "and" can split "sand") get one more
    merge joining their pieces, until every listed word is a single token.
    """
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for c in alphabet:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []

    def join(pieces: list[str]) -> None:
        merged = pieces[0]
        for piece in pieces[1:]:
            if (merged, piece) not in merges:
                merges.append((merged, piece))
            merged += piece
            vocab.setdefault(merged, len(vocab))

    for word in words:
        join(list(word[:-1]) + [word[-1] + "</w>"])
    for _ in range(len(words)):
        tokenizer = _clip_tokenizer(vocab, merges)
        split = [pieces for pieces in map(tokenizer.tokenize, words) if len(pieces) > 1]
        if not split:
            return tokenizer
        for pieces in split:
            join(pieces)
    raise RuntimeError("toy vocabulary did not converge to one token per word")


def _clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> CLIPTokenizer:
    full = dict(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        full[special] = len(full)
    return CLIPTokenizer(vocab=full, merges=list(merges), model_max_length=77)


def toy_text_encoder(tokenizer: CLIPTokenizer, hidden: int, layers: int, heads: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_tiny(seed: int = 0, in_channels: int = 4) -> Components:
    """Random weights from a fixed seed, identical in every process. `in_channels=9` gives a UNet shaped like GLIGEN's
    inpainting one (noisy latents, the photo's masked latents, the mask)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_toy_tokenizer()
        text_encoder = toy_text_encoder(tokenizer, hidden=32, layers=2, heads=4)
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        )
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=in_channels,
            out_channels=4,
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
            attention_type=gligen.ATTENTION_TYPE,
        )
        gligen.set_gates(unet, 1.0)  # fresh fusers have closed gates
    return Components(vae, text_encoder.eval(), tokenizer, unet.eval(), dict(sd1.SCHEDULER_CONFIG), "tiny",
                      defaults=replace(TINY_DEFAULTS))
