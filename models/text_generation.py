"""text-generation: a causal language model continues the prompt (AutoModelForCausalLM + generate)."""

from __future__ import annotations

from typing import Any

from jobs.kinds import TextGenerationInput, TextGenerationOutput
from models.base import Adapter, Prediction, StopSignal
from models.generation import Request, check_fits, generate, use_padding
from models.loading import torch_dtype


class TextGenerationAdapter(Adapter[TextGenerationInput, Request]):
    kind = "text-generation"
    interruptible = True

    def load_weights(self, device: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(self.source, **kwargs)
        use_padding(self.tokenizer, side="left")  # generation appends on the right
        model: Any = AutoModelForCausalLM.from_pretrained(
            self.source, dtype=torch_dtype(self.spec.dtype, device), **kwargs
        )
        self.model = model.to(device)
        self.model.eval()

    def prepare(self, item: TextGenerationInput) -> Request:
        # Special-token text in a prompt stays text: a job cannot forge <|endoftext|>.
        input_ids = self.tokenizer(item.prompt, split_special_tokens=True)["input_ids"]
        check_fits(self.model, prompt_tokens=len(input_ids), max_new_tokens=item.max_new_tokens)
        return Request(input_ids=input_ids, options=item, continues_prompt=True)

    def predict(self, batch: list[Request], *, stop: StopSignal | None = None) -> list[Prediction]:
        return [
            Prediction(
                TextGenerationOutput(
                    text=done.text,
                    finish_reason=done.finish_reason,
                    prompt_tokens=done.prompt_tokens,
                    completion_tokens=done.completion_tokens,
                )
            )
            for done in generate(self.model, self.tokenizer, batch, device=self.device, stop=stop)
        ]
