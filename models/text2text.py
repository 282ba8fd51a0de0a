"""text2text-generation: an encoder-decoder model (T5 family) rewrites the text (AutoModelForSeq2SeqLM + generate).

transformers 5 has no text2text pipeline; this is the same ``generate`` call it made.
"""

from __future__ import annotations

from typing import Any

from jobs.kinds import Text2TextInput, Text2TextOutput
from models.base import Adapter, Prediction, StopSignal
from models.generation import Request, check_fits, generate, use_padding
from models.loading import torch_dtype


class Text2TextAdapter(Adapter[Text2TextInput, Request]):
    kind = "text2text-generation"
    interruptible = True

    def load_weights(self, device: str) -> None:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        kwargs = self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(self.source, **kwargs)
        use_padding(self.tokenizer, side="right")  # the encoder reads the whole input; the decoder starts fresh
        model: Any = AutoModelForSeq2SeqLM.from_pretrained(
            self.source, dtype=torch_dtype(self.spec.dtype, device), **kwargs
        )
        self.model = model.to(device)
        self.model.eval()

    def prepare(self, item: Text2TextInput) -> Request:
        input_ids = self.tokenizer(item.text, split_special_tokens=True)["input_ids"]
        check_fits(self.model, prompt_tokens=len(input_ids), max_new_tokens=item.max_new_tokens)
        return Request(input_ids=input_ids, options=item, num_beams=item.num_beams)

    def predict(self, batch: list[Request], *, stop: StopSignal | None = None) -> list[Prediction]:
        return [
            Prediction(
                Text2TextOutput(
                    text=done.text, prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens
                )
            )
            for done in generate(self.model, self.tokenizer, batch, device=self.device, stop=stop)
        ]
