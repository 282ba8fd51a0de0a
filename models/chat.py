"""chat: messages rendered with the tokenizer's chat template, answered by a causal LM.

Options (models file): ``system_prompt``, a system message put first when the
conversation brings none of its own.
"""

from __future__ import annotations

from typing import Any

from jobs.errors import InvalidInput, ModelNotConfigured
from jobs.kinds import ChatInput, ChatMessage, ChatOutput
from jobs.modelsfile import ModelSpec
from models.base import Adapter, Prediction, StopSignal
from models.generation import Request, check_fits, generate, use_padding
from models.loading import torch_dtype


class ChatAdapter(Adapter[ChatInput, Request]):
    kind = "chat"
    interruptible = True

    def __init__(self, spec: ModelSpec, **located: Any) -> None:
        super().__init__(spec, **located)  # source=, resolve=: as Adapter takes them
        system_prompt = self.spec.options.get("system_prompt")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ModelNotConfigured(f"[kinds.chat] options.system_prompt must be a string, not {system_prompt!r}")
        self.system_prompt: str | None = system_prompt or None

    def load_weights(self, device: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = self.pretrained_kwargs()
        self.tokenizer = AutoTokenizer.from_pretrained(self.source, **kwargs)
        if not self.tokenizer.chat_template:
            raise ModelNotConfigured(
                f"chat model {self.spec.model!r} has no chat template in its tokenizer; "
                "use an instruction-tuned model that ships one, or serve it as text-generation"
            )
        use_padding(self.tokenizer, side="left")
        model: Any = AutoModelForCausalLM.from_pretrained(
            self.source, dtype=torch_dtype(self.spec.dtype, device), **kwargs
        )
        self.model = model.to(device)
        self.model.eval()

    def conversation(self, messages: list[ChatMessage]) -> list[dict[str, str]]:
        """The messages as the template wants them, the configured system prompt first if none is given."""
        turns = [{"role": m.role, "content": m.content} for m in messages]
        if self.system_prompt and not any(m.role == "system" for m in messages):
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    def prepare(self, item: ChatInput) -> Request:
        from jinja2 import TemplateError

        try:
            # sanitize_control_tokens: "<|im_end|>" typed in a message is text, not the end of a turn.
            encoded: Any = self.tokenizer.apply_chat_template(
                self.conversation(item.messages), add_generation_prompt=True, sanitize_control_tokens=True
            )
        except TemplateError as exc:  # e.g. "roles must alternate user/assistant", "system role not supported"
            raise InvalidInput(f"this model's chat template refuses these messages: {exc}") from None
        input_ids = list(encoded["input_ids"])
        check_fits(self.model, prompt_tokens=len(input_ids), max_new_tokens=item.max_new_tokens)
        return Request(input_ids=input_ids, options=item)

    def predict(self, batch: list[Request], *, stop: StopSignal | None = None) -> list[Prediction]:
        return [
            Prediction(
                ChatOutput(
                    message=ChatMessage(role="assistant", content=done.text),
                    finish_reason=done.finish_reason,
                    prompt_tokens=done.prompt_tokens,
                    completion_tokens=done.completion_tokens,
                )
            )
            for done in generate(self.model, self.tokenizer, batch, device=self.device, stop=stop)
        ]
