"""image-generation: a diffusers text-to-image pipeline (AutoPipelineForText2Image) to PNG artifacts."""

from __future__ import annotations

import secrets
from typing import Any

from jobs.kinds import GeneratedImage, ImageGenerationInput, ImageGenerationOutput
from models.base import Adapter, Blob, Prediction, StopSignal
from models.images import encode_png
from models.loading import torch_dtype

PNG = "image/png"


class ImageGenerationAdapter(Adapter[ImageGenerationInput, ImageGenerationInput]):
    kind = "image-generation"
    interruptible = True

    def load_weights(self, device: str) -> None:
        from diffusers import AutoPipelineForText2Image

        # diffusers 0.42 renamed torch_dtype to dtype (torch_dtype is deprecated until 1.0)
        self.pipeline = AutoPipelineForText2Image.from_pretrained(
            self.source, dtype=torch_dtype(self.spec.dtype, device), **self.pretrained_kwargs()
        ).to(device)
        self.pipeline.set_progress_bar_config(disable=True)

    def predict(self, batch: list[ImageGenerationInput], *, stop: StopSignal | None = None) -> list[Prediction]:
        signal = stop or StopSignal()
        return [self.generate(item, stop=signal) for item in batch]  # sizes and steps differ per item: one call each

    def generate(self, item: ImageGenerationInput, *, stop: StopSignal) -> Prediction:
        """Run the pipeline for one item; the same seed gives the same PNGs on the same device."""
        import torch

        def between_steps(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            """diffusers calls this after each denoising step; its interrupt flag skips the rest."""
            if stop.is_set():
                pipeline._interrupt = True
            return tensors

        seed = secrets.randbelow(2**32) if item.seed is None else item.seed
        generator = torch.Generator(self.device).manual_seed(seed)
        with torch.inference_mode():
            result = self.pipeline(
                prompt=item.prompt,
                negative_prompt=item.negative_prompt,
                num_inference_steps=item.num_inference_steps,
                guidance_scale=item.guidance_scale,
                width=item.width,
                height=item.height,
                num_images_per_prompt=item.num_images,
                generator=generator,
                output_type="pil",
                callback_on_step_end=between_steps,
            )
        stop.check()
        blobs = [Blob(f"image-{i}.png", PNG, encode_png(image)) for i, image in enumerate(result.images)]
        refs = [
            GeneratedImage(artifact=blob.name, content_type=PNG, width=image.width, height=image.height)
            for blob, image in zip(blobs, result.images, strict=True)
        ]
        return Prediction(ImageGenerationOutput(images=refs, seed=seed), blobs=blobs)
