"""Image decoding limits, and the tiny ViT and Stable Diffusion adapters end to end on the CPU."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from jobs.errors import InvalidInput, TimedOut
from jobs.kinds import ImageClassificationInput, ImageClassificationOutput, ImageGenerationInput, ImageGenerationOutput
from jobs.modelsfile import ModelSpec
from jobs.schemas import BinaryInput
from models.base import StopSignal
from models.image_classification import ImageClassificationAdapter
from models.image_generation import ImageGenerationAdapter
from models.images import decode_image, encode_png
from models.tiny import ensure_built
from models.tiny_vision import IMAGE_LABELS

MAX_PIXELS, MAX_BYTES = 40_000_000, 20_000_000  # the adapters' defaults


def decode(data: bytes) -> Image.Image:
    return decode_image(data, max_pixels=MAX_PIXELS, max_bytes=MAX_BYTES)


def encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int, *, idat: bytes = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` 1-bit grey pixels; its data is ``idat``."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb_png(width: int, height: int) -> bytes:
    """A valid, all-black PNG of ``width`` x ``height``, compressed row by row to a few kB."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then 1 bit per pixel
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_claiming(width, height, idat=idat)


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any image's pixels are decoded (every format's load() is ImageFile.load)."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"{self.format} {self.size} pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# --- decode_image ---------------------------------------------------------


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "GIF"])
def test_decodes_allowed_formats_to_rgb(image_format: str) -> None:
    data = encoded(Image.new("RGB", (40, 30), (200, 30, 30)), image_format)
    image = decode(data)
    assert (image.mode, image.size) == ("RGB", (40, 30))
    red, green, blue = image.getpixel((20, 15))  # type: ignore[misc]
    assert red > 150 and green < 80 and blue < 80  # lossy formats stay close


def test_transparent_png_becomes_rgb() -> None:
    image = decode(encoded(Image.new("RGBA", (8, 8), (0, 0, 255, 128)), "PNG"))
    assert image.mode == "RGB"


def test_refuses_garbage() -> None:
    with pytest.raises(InvalidInput, match="not a readable GIF, JPEG, PNG, WEBP file"):
        decode(b"this is not an image at all")


@pytest.mark.parametrize("image_format", ["BMP", "TIFF"])
def test_refuses_formats_outside_the_allowlist(image_format: str, no_pixel_decoding: None) -> None:
    data = encoded(Image.new("RGB", (8, 8)), image_format)
    with pytest.raises(InvalidInput, match="not a readable"):
        decode(data)


def test_allowlist_is_configurable() -> None:
    data = encoded(Image.new("RGB", (8, 8)), "JPEG")
    with pytest.raises(InvalidInput, match="not a readable PNG file"):
        decode_image(data, max_pixels=MAX_PIXELS, max_bytes=MAX_BYTES, formats=frozenset({"PNG"}))


def test_refuses_too_many_bytes_before_parsing(no_pixel_decoding: None) -> None:
    data = encoded(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(InvalidInput, match=f"image is {len(data)} bytes.*max_input_bytes=10"):
        decode_image(data, max_pixels=1_000, max_bytes=10)


def test_refuses_a_header_over_the_pixel_limit(no_pixel_decoding: None) -> None:
    with pytest.raises(InvalidInput, match=r"7000×7000 = 49,000,000 pixels.*max_image_pixels=40000000"):
        decode(png_claiming(7000, 7000))


def test_refuses_a_header_claiming_50000_by_50000(no_pixel_decoding: None) -> None:
    data = png_claiming(50_000, 50_000)
    assert len(data) < 100
    with pytest.raises(InvalidInput, match="decompression bomb"):
        decode(data)


def test_refuses_a_decompression_bomb(no_pixel_decoding: None) -> None:
    data = bomb_png(10_000, 10_000)  # 100 megapixels: 300 MB as RGB
    assert len(data) < 50_000
    with pytest.raises(InvalidInput, match="decompression bomb"):
        decode(data)
    # Pillow's own guard (over Image.MAX_IMAGE_PIXELS) holds even when our limit is set too high
    with pytest.raises(InvalidInput, match="decompression bomb"):
        decode_image(data, max_pixels=10**12, max_bytes=10**9)


def test_refuses_a_truncated_image() -> None:
    noise = Image.frombytes("L", (64, 64), bytes(range(256)) * 16).convert("RGB")
    data = encoded(noise, "PNG")
    with pytest.raises(InvalidInput, match="PNG image is corrupt or truncated"):
        decode(data[: len(data) // 2])


def test_encode_png_round_trips_and_is_deterministic() -> None:
    image = Image.new("RGB", (16, 8), (1, 2, 3))
    data = encode_png(image)
    assert data == encode_png(image)
    back = decode(data)
    assert back.size == (16, 8) and back.getpixel((0, 0)) == (1, 2, 3)


# --- image-classification --------------------------------------------------


def image_input(data: bytes, *, top_k: int) -> ImageClassificationInput:
    binary = BinaryInput(base64="x")
    binary.resolve(data)
    return ImageClassificationInput(image=binary, top_k=top_k)


@pytest.fixture(scope="module")
def classifier(data_dir: Path) -> ImageClassificationAdapter:
    spec = ModelSpec(kind="image-classification", model="builtin:tiny-vit", device="cpu")
    adapter = ImageClassificationAdapter(spec, source=str(ensure_built("tiny-vit", data_dir=data_dir)))
    adapter.load("cpu")
    return adapter


def test_classifies_a_batch_with_ranked_top_k(classifier: ImageClassificationAdapter) -> None:
    items = [
        image_input(encoded(Image.new("RGB", (40, 30), (250, 0, 0)), "PNG"), top_k=3),
        image_input(encoded(Image.new("RGB", (64, 64), (0, 0, 250)), "JPEG"), top_k=2),
    ]
    predictions = classifier.predict([classifier.prepare(item) for item in items])
    assert len(predictions) == 2
    for prediction, top_k in zip(predictions, [3, 2], strict=True):
        output = prediction.output
        assert isinstance(output, ImageClassificationOutput)
        scores = [entry.score for entry in output.labels]
        assert len(scores) == top_k
        assert {entry.label for entry in output.labels} <= set(IMAGE_LABELS)
        assert scores == sorted(scores, reverse=True) and all(score > 0 for score in scores)
        assert sum(scores) <= 1 + 1e-6
        assert (output.label, output.score) == (output.labels[0].label, scores[0])
        assert prediction.blobs == []


def test_classify_scores_every_label(classifier: ImageClassificationAdapter) -> None:
    (scores,) = classifier.classify([Image.new("RGB", (32, 32), (0, 128, 0))])
    assert set(scores) == set(IMAGE_LABELS)
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)


def test_classifier_prepare_applies_the_models_file_limits(data_dir: Path) -> None:
    spec = ModelSpec(kind="image-classification", model="builtin:tiny-vit", limits={"max_image_pixels": 100})
    adapter = ImageClassificationAdapter(spec, source=str(ensure_built("tiny-vit", data_dir=data_dir)))
    with pytest.raises(InvalidInput, match="max_image_pixels=100"):
        adapter.prepare(image_input(encoded(Image.new("RGB", (20, 20)), "PNG"), top_k=1))


# --- image-generation -------------------------------------------------------


@pytest.fixture(scope="module")
def generator(data_dir: Path) -> ImageGenerationAdapter:
    spec = ModelSpec(kind="image-generation", model="builtin:tiny-sd", device="cpu")
    adapter = ImageGenerationAdapter(spec, source=str(ensure_built("tiny-sd", data_dir=data_dir)))
    adapter.load("cpu")
    return adapter


def pngs(adapter: ImageGenerationAdapter, item: ImageGenerationInput) -> tuple[int, list[bytes]]:
    (prediction,) = adapter.predict([item])
    output = prediction.output
    assert isinstance(output, ImageGenerationOutput)
    assert [ref.artifact for ref in output.images] == [blob.name for blob in prediction.blobs]
    for ref, blob in zip(output.images, prediction.blobs, strict=True):
        assert ref.content_type == blob.content_type == "image/png"
        image = Image.open(io.BytesIO(blob.data))
        assert image.format == "PNG" and image.size == (ref.width, ref.height) == (item.width, item.height)
    return output.seed, [blob.data for blob in prediction.blobs]


def test_generates_pngs_of_the_requested_size(generator: ImageGenerationAdapter) -> None:
    item = ImageGenerationInput(
        prompt="一只穿着蓝色衣服的狗",
        negative_prompt="blurry",
        num_inference_steps=2,
        width=64,
        height=32,
        num_images=2,
        seed=7,
    )
    seed, first = pngs(generator, item)
    assert seed == 7 and len(first) == 2
    assert first[0] != first[1]  # two images from one prompt are different samples
    assert pngs(generator, item)[1] == first  # same seed, byte-identical PNGs


def test_picks_and_reports_a_seed_that_reproduces(generator: ImageGenerationAdapter) -> None:
    item = ImageGenerationInput(prompt="a dog", num_inference_steps=2, width=32, height=48, guidance_scale=0)
    seed, first = pngs(generator, item)
    assert 0 <= seed < 2**32 and len(first) == 1
    _, again = pngs(generator, item.model_copy(update={"seed": seed}))
    assert again == first


def test_a_stop_request_skips_the_remaining_denoising_steps(generator: ImageGenerationAdapter) -> None:
    calls: list[int] = []
    hook = generator.pipeline.unet.register_forward_hook(lambda *_: calls.append(1))
    item = ImageGenerationInput(prompt="a dog", num_inference_steps=8, width=32, height=32, seed=1)
    try:
        stop = StopSignal()
        stop.request(TimedOut("stopped at the soft time limit"))
        with pytest.raises(TimedOut):
            generator.predict([item], stop=stop)
        stopped = len(calls)
        calls.clear()
        generator.predict([item], stop=StopSignal())
    finally:
        hook.remove()
    assert (stopped, len(calls)) == (1, 8)  # one step ran, then the interrupt flag skipped the rest
