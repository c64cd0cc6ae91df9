"""The processor of a dual encoder: an image processor (processor.json) and a text tokenizer
(tokenizer.json), saved side by side in the checkpoint directory."""

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..tokenizers import TOKENIZER_FILE, SubwordTokenizer, load_tokenizer
from .image import ImageProcessor

EXAMPLE_TEXT = "the cat a dog sat on a mat 0 1 2 3 4 5 6 7 8 9"  # a WordPiece of few ids: [SEP] (3) ends a text


class ClipProcessor:
    """Images -> pixel_values through `image`; texts -> right-padded input_ids and attention_mask
    through `tokenizer` (a subword tokenizer whose texts end in the model's end-of-text token)."""

    def __init__(self, image: ImageProcessor, tokenizer: SubwordTokenizer):
        if not isinstance(tokenizer, SubwordTokenizer):
            raise UserError("a dual encoder needs a subword tokenizer (BPE or WordPiece), not a character tokenizer")
        self.image, self.tokenizer = image, tokenizer

    @staticmethod
    def exists(directory) -> bool:
        return ImageProcessor.exists(directory) and (Path(directory) / TOKENIZER_FILE).is_file()

    @staticmethod
    def load(directory) -> "ClipProcessor":
        return ClipProcessor(ImageProcessor.load(directory), load_tokenizer(Path(directory)))

    def save(self, directory):
        self.image.save(directory)
        self.tokenizer.save(directory)

    @staticmethod
    def example(config) -> "ClipProcessor":
        """For a tiny model: an image processor of its size and a WordPiece of a few words."""
        tokenizer = SubwordTokenizer.train_wordpiece(EXAMPLE_TEXT, config.vocab_size)
        return ClipProcessor(ImageProcessor.example(config), tokenizer)

    @classmethod
    def from_hf(cls, directory, config) -> "ClipProcessor":
        from ..tokenizers import load_hf_tokenizer

        return cls(ImageProcessor.from_hf(directory, config), load_hf_tokenizer(Path(directory)))

    # -- model input ------------------------------------------------------------------------------
    def read(self, path) -> np.ndarray:
        """One image file (PNG, JPEG or .npy)."""
        return self.image.read(path)

    def decode(self, data: bytes, name: str = "input") -> np.ndarray:
        return self.image.decode(data, name)

    def __call__(self, items: list) -> dict:
        """Raw images -> {"pixel_values": (B, C, S, S)}."""
        return self.image(items)

    def texts(self, texts: list, max_length: int | None) -> dict:
        """Texts -> {"input_ids", "attention_mask"}: (B, T) right-padded, at most max_length tokens
        (a longer text is cut, its end-of-text token kept; None: never cut)."""
        if not all(isinstance(t, str) for t in texts):
            raise UserError("every text must be a string")
        encoded = self.tokenizer.batch_encode(texts, max_length=max_length)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def example_items(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return self.image.example_items(count, rng)

