"""Tiny audio models for the demo profile and the tests: wav2vec2 (CTC), Whisper and MusicGen.

Config-constructed with seeded random weights and locally built tokenizers, saved
with ``save_pretrained`` so that the adapters load them like hub models. Their
transcripts and music are meaningless; the code path is the real one.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from models.tiny import CORPUS

SAMPLING_RATE_HZ = 16_000  # what wav2vec2 and Whisper checkpoints expect
WHISPER_TIMESTAMPS = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]  # 0.00 to 30.00 s
CTC_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "|"]  # "|" separates words in wav2vec2 vocabularies


def build_tiny_wav2vec2(save_dir: Path) -> None:
    """Wav2Vec2ForCTC with a character vocabulary, saved with its Wav2Vec2Processor."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    save_dir.mkdir(parents=True, exist_ok=True)
    letters = [*string.ascii_lowercase, "'"]
    vocab_path = save_dir / "vocab.json"
    vocab_path.write_text(json.dumps({token: i for i, token in enumerate(CTC_SPECIALS + letters)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab_path), word_delimiter_token="|", do_lower_case=True)
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLING_RATE_HZ, padding_value=0.0, do_normalize=True
    )
    Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(save_dir)
    config = Wav2Vec2Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,  # the real stride (320 samples a frame), narrow channels
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        mask_time_prob=0.0,
    )
    torch.manual_seed(0)  # the same weights on every machine
    Wav2Vec2ForCTC(config).save_pretrained(save_dir, safe_serialization=True)


def train_unigram(*, vocab_size: int = 300) -> Any:
    """A T5-style tokenizer (SentencePiece Unigram, ``▁`` word marks) trained on CORPUS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    specials = ["<pad>", "</s>", "<unk>"]  # T5's order: pad 0, eos 1, unk 2
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")  # as T5Tokenizer splits
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer)
    vocab = [(piece, score) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=256)


def build_tiny_musicgen(save_dir: Path) -> None:
    """MusicgenForConditionalGeneration (T5 text encoder, Encodec codec) with its MusicgenProcessor."""
    import torch
    from transformers import (
        EncodecConfig,
        EncodecFeatureExtractor,
        GenerationConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenProcessor,
        T5Config,
    )

    tokenizer = train_unigram()
    sampling_rate_hz = 8_000
    feature_extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=sampling_rate_hz, padding_value=0.0)
    MusicgenProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(save_dir)
    text_encoder = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    audio_encoder = EncodecConfig(
        sampling_rate=sampling_rate_hz,
        upsampling_ratios=[8, 5, 4],  # 160 samples a frame: 50 frames a second, as in MusicGen
        hidden_size=16,
        num_filters=4,
        num_lstm_layers=1,
        codebook_size=64,
        target_bandwidths=[0.75],  # 0.75 kbps at 50 frames/s of 6-bit codes: 2 codebooks
    )
    codebook_size = audio_encoder.codebook_size
    num_codebooks = 2
    decoder = MusicgenDecoderConfig(
        vocab_size=codebook_size,
        num_codebooks=num_codebooks,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=1024,
        pad_token_id=codebook_size,
        bos_token_id=codebook_size,
    )
    config = MusicgenConfig(text_encoder=text_encoder, audio_encoder=audio_encoder, decoder=decoder)
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(config)
    codec: Any = model.audio_encoder
    with torch.no_grad():
        for layer in codec.quantizer.layers:
            layer.codebook.embed.normal_()  # Encodec starts its codebooks at zero: every code would sound the same
    model.generation_config = GenerationConfig(
        decoder_start_token_id=codebook_size,
        bos_token_id=codebook_size,
        pad_token_id=codebook_size,
        do_sample=True,
        guidance_scale=3.0,
        max_length=1024,
    )
    model.save_pretrained(save_dir, safe_serialization=True)


WHISPER_TASKS = ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>"]


def whisper_languages() -> list[str]:
    """Whisper's language tokens; their order fixes their ids (start of transcript + 1 + index)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return [f"<|{code}|>" for code in LANGUAGES]


def whisper_specials() -> list[str]:
    """Whisper's special tokens in their canonical order."""
    return ["<|endoftext|>", "<|startoftranscript|>", *whisper_languages(), *WHISPER_TASKS, "<|notimestamps|>"]


def train_whisper_tokenizer(*, vocab_size: int = 400) -> Any:
    """A byte-level BPE trained on CORPUS, with Whisper's special and timestamp tokens after it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import WhisperTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    bpe = json.loads(tok.to_str())["model"]
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in bpe["merges"]]
    tokenizer = WhisperTokenizer(
        vocab=bpe["vocab"], merges=merges, additional_special_tokens=whisper_specials(), model_max_length=64
    )
    tokenizer.add_tokens(WHISPER_TIMESTAMPS)
    return tokenizer


def build_tiny_whisper(save_dir: Path) -> None:
    """WhisperForConditionalGeneration (multilingual, 80 mel bins) with its WhisperProcessor."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    tokenizer = train_whisper_tokenizer()
    feature_extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLING_RATE_HZ)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(save_dir)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in whisper_specials()}
    timestamps = tokenizer.convert_tokens_to_ids(WHISPER_TIMESTAMPS)
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,  # 30 s of 10 ms mel frames, halved by the encoder's stride
        max_target_positions=64,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=32,  # random weights rarely stop on their own
        is_multilingual=True,
        lang_to_id={token: ids[token] for token in whisper_languages()},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        begin_suppress_tokens=[eot],
        suppress_tokens=timestamps,  # random weights would emit them and send generate seeking through 30 s
        return_timestamps=False,
    )
    model.save_pretrained(save_dir, safe_serialization=True)
