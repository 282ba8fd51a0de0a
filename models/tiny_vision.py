"""Tiny vision models for the demo and the tests: a ViT classifier and a Stable Diffusion pipeline.

Config-constructed with seeded random weights and saved with ``save_pretrained``,
so they load through the same ``from_pretrained`` calls as real checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.tiny import CORPUS

IMAGE_LABELS = ["cat", "dog", "car", "food"]
VIT_IMAGE_SIZE_PX = 32  # 4×4 patches of 8 px: enough to exercise the real code path
CLIP_MAX_TOKENS = 77  # what real CLIP text encoders accept, so prompts are truncated as in production


def build_tiny_vit(save_dir: Path) -> None:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    ViTImageProcessorPil(
        size={"height": VIT_IMAGE_SIZE_PX, "width": VIT_IMAGE_SIZE_PX},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(save_dir)
    config = ViTConfig(
        image_size=VIT_IMAGE_SIZE_PX,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(IMAGE_LABELS)),
        label2id={label: i for i, label in enumerate(IMAGE_LABELS)},
    )
    torch.manual_seed(0)  # the same weights on every machine
    ViTForImageClassification(config).save_pretrained(save_dir, safe_serialization=True)


def train_clip_bpe(*, vocab_size: int = 800) -> Any:
    """A CLIP tokenizer (byte-level BPE, ``</w>`` word ends) trained on the corpus.

    Every byte, alone and word-final, is in the vocabulary as in real CLIP, so any
    text (Chinese included) encodes without unknown tokens.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    template = CLIPTokenizer()  # borrow CLIP's normalizer and pre-tokenizer for training
    bpe = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    bpe.normalizer = template.backend_tokenizer.normalizer
    bpe.pre_tokenizer = template.backend_tokenizer.pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False
    )
    bpe.train_from_iterator(CORPUS, trainer)
    # (left, right) pairs: tokenizers' BPE refuses the "left right" strings CLIPTokenizer's hint suggests
    merges: Any = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    tokens = sorted(alphabet) + [f"{char}</w>" for char in sorted(alphabet)]
    tokens += [left + right for left, right in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_TOKENS)


def build_tiny_sd(save_dir: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = train_clip_bpe()
    torch.manual_seed(0)  # the same weights on every machine
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(  # two blocks: latents are 2× smaller per side (8× in real SD)
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = EulerDiscreteScheduler(  # SD's noise schedule; trailing spacing suits few-step sampling
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        steps_offset=1,
    )
    pipeline: Any = StableDiffusionPipeline(  # Any: mypy cannot see DiffusionPipeline.save_pretrained
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(save_dir, safe_serialization=True)
