"""Tiny text generation models for the demo profile and the tests: GPT-2, a chat model, T5.

Same recipe as ``models.tiny``: a tokenizer trained on ``CORPUS`` with ``tokenizers``,
a config-constructed model with seeded random weights, both saved with
``save_pretrained`` (safetensors). Their text is gibberish; the code path is real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.tiny import CORPUS

MAX_POSITIONS = 512  # prompt plus completion; enough for the demo and the tests

GPT2_EOS = "<|endoftext|>"  # GPT-2's only special token: bos, eos and unk at once

CHAT_PAD, CHAT_START, CHAT_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# transformers 5 loads any qwen2 model's tokenizer as Qwen2Tokenizer, which imposes NFC and this
# split (single digits, ...) whatever tokenizer.json says; train with them so saved == loaded.
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# ChatML, as Qwen and others write it; add_generation_prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2, as in the real T5 vocabulary


def train_byte_level_bpe(
    save_dir: Path, *, special_tokens: list[str], split: str | None = None, vocab_size: int = 600, **named: Any
) -> Any:
    """A byte-level BPE tokenizer (GPT-2's regex, or NFC and ``split``): any text encodes, nothing is unknown."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so Chinese always encodes
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS, **named)
    fast.save_pretrained(save_dir)
    return fast


def build_tiny_gpt2(save_dir: Path) -> None:
    """GPT-2 as on the hub: one special token, no pad token (the adapter copes)."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    tokenizer = train_byte_level_bpe(
        save_dir, special_tokens=[GPT2_EOS], bos_token=GPT2_EOS, eos_token=GPT2_EOS, unk_token=GPT2_EOS
    )
    eos_id = tokenizer.convert_tokens_to_ids(GPT2_EOS)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=MAX_POSITIONS,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    torch.manual_seed(0)  # the same weights on every machine
    model = GPT2LMHeadModel(config)
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model.save_pretrained(save_dir)


def build_tiny_chat(save_dir: Path) -> None:
    """A Qwen2-shaped causal LM with a ChatML template; a turn ends with ``<|im_end|>``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = train_byte_level_bpe(
        save_dir,
        special_tokens=[CHAT_PAD, CHAT_START, CHAT_END],
        split=QWEN2_SPLIT,
        eos_token=CHAT_END,
        pad_token=CHAT_PAD,
        chat_template=CHAT_TEMPLATE,
    )
    end_id, pad_id = tokenizer.convert_tokens_to_ids(CHAT_END), tokenizer.convert_tokens_to_ids(CHAT_PAD)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=end_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[end_id, pad_id], pad_token_id=pad_id)
    model.save_pretrained(save_dir)


def train_t5_unigram(save_dir: Path, *, vocab_size: int = 400) -> Any:
    """A SentencePiece-style Unigram tokenizer with byte fallback, ``</s>`` after every input."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [T5_PAD, T5_EOS, T5_UNK]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(
        CORPUS, trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=T5_UNK)
    )
    # Characters the corpus lacks become their UTF-8 bytes instead of <unk>, as in Llama's tokenizer.
    vocab = [(piece, score) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    floor = min(score for _, score in vocab) - 1.0
    vocab += [(f"<0x{byte:02X}>", floor) for byte in range(256)]
    tok.model = models.Unigram(vocab, unk_id=specials.index(T5_UNK), byte_fallback=True)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {T5_EOS}", pair=f"$A {T5_EOS} $B {T5_EOS}", special_tokens=[(T5_EOS, specials.index(T5_EOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=T5_PAD, eos_token=T5_EOS, unk_token=T5_UNK, model_max_length=MAX_POSITIONS
    )
    fast.save_pretrained(save_dir)
    return fast


def build_tiny_t5(save_dir: Path) -> None:
    """A two-layer T5; the decoder starts from ``<pad>`` as T5 does."""
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    tokenizer = train_t5_unigram(save_dir)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    )
    config.decoder_start_token_id = pad_id  # T5's shift_right reads it; not a declared T5Config field
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(decoder_start_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(save_dir)
