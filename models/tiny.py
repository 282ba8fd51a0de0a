"""Tiny models that mlq builds locally for the demo profile and the tests.

They are real transformers models (config-constructed, random but seeded
weights, a tokenizer trained with ``tokenizers``), saved with
``save_pretrained`` and loaded back through ``from_pretrained``, so the whole
code path is real; their outputs are meaningless, and the API says which
profile served a job. Built once into ``<data_dir>/models/<name>``.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER = "mlq-builtin.json"  # written last: a folder without it is an interrupted build

# English and Chinese lines from the product's own examples, enough to train a vocabulary.
CORPUS = [
    "这是一条新闻标题",
    "我喜欢看电影和玩游戏",
    "一只穿着蓝色衣服的狗",
    "我想听一首欢快的流行歌曲",
    "今天的天气很好，我们去公园散步吧",
    "请问我的订单什么时候发货",
    "the quick brown fox jumps over the lazy dog",
    "breaking news: the market closed higher today",
    "the team won the championship after a long season",
    "a new phone with a faster chip and a better camera",
    "the film festival opens with a comedy about a musician",
    "customer service replies to questions about orders and refunds",
]
TEXT_LABELS = ["news", "sports", "technology", "entertainment"]


def train_wordpiece(save_dir: Path, *, vocab_size: int = 400) -> None:
    """Train a BERT-style WordPiece tokenizer and save it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(save_dir)


def build_tiny_text_classifier(save_dir: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    train_wordpiece(save_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(save_dir)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        id2label=dict(enumerate(TEXT_LABELS)),
        label2id={label: i for i, label in enumerate(TEXT_LABELS)},
    )
    torch.manual_seed(0)  # the same weights on every machine
    BertForSequenceClassification(config).save_pretrained(save_dir, safe_serialization=True)


# name -> "module:function" building it into a folder; imported only when built.
BUILDERS: dict[str, str] = {
    "tiny-text-classifier": "models.tiny:build_tiny_text_classifier",
    "tiny-gpt2": "models.tiny_text:build_tiny_gpt2",
    "tiny-chat": "models.tiny_text:build_tiny_chat",
    "tiny-t5": "models.tiny_text:build_tiny_t5",
    "tiny-wav2vec2": "models.tiny_audio:build_tiny_wav2vec2",
    "tiny-whisper": "models.tiny_audio:build_tiny_whisper",
    "tiny-musicgen": "models.tiny_audio:build_tiny_musicgen",
    "tiny-vit": "models.tiny_vision:build_tiny_vit",
    "tiny-sd": "models.tiny_vision:build_tiny_sd",
}


def builder(name: str) -> Callable[[Path], None]:
    module_name, _, function = BUILDERS[name].partition(":")
    built: Callable[[Path], None] = getattr(importlib.import_module(module_name), function)
    return built


def ensure_built(name: str, *, data_dir: Path) -> Path:
    """The folder of builtin model ``name``, built now if missing. Safe across processes."""
    if name not in BUILDERS:
        raise KeyError(f"no builtin model {name!r}; builtins: {', '.join(sorted(BUILDERS))}")
    root = data_dir / "models"
    target = root / name
    if (target / MARKER).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be building the same model
        if (target / MARKER).exists():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            builder(name)(staging)
            (staging / MARKER).write_text(
                json.dumps({"name": name, "note": "tiny locally built model; outputs are meaningless"})
            )
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def build_all(*, data_dir: Path) -> dict[str, Path]:
    return {name: ensure_built(name, data_dir=data_dir) for name in BUILDERS}
